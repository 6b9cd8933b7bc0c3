"""API keys and per-key rate limits, as one ASGI middleware in front of every ``/api/`` route.

Keys are off in the embedded default. They are required when ``PEEK_REQUIRE_API_KEYS=1`` or as
soon as one active key exists (``peek keys create``). A request then carries its key in
``X-API-Key`` (or ``Authorization: Bearer``); each key has a sliding-window limit of requests per
minute, kept in Redis (sorted sets) so that every API process shares it, or in-process without Redis.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from infra.keys import KeyRecord, active_key_count, find_active_key, hash_secret
from infra.settings import Settings

log = logging.getLogger(__name__)

OPEN_PATHS = ("/api/health",)
WINDOW_S = 60.0
CACHE_TTL_S = 5.0  # how long a key lookup (or "are keys on?") is trusted; bounds revocation delay
REDIS_RETRY_S = 5.0

_current_key: contextvars.ContextVar[KeyRecord | None] = contextvars.ContextVar("peek_api_key", default=None)


def current_key() -> KeyRecord | None:
    """The API key of the request being served; None when access control is off."""
    return _current_key.get()


def current_owner_id() -> int | None:
    key = _current_key.get()
    return key.id if key else None


def request_key(request: Request) -> KeyRecord | None:
    return getattr(request.state, "api_key", None)


def may_read(key: KeyRecord | None, owner_key_id: int | None) -> bool:
    """A key reads the images it uploaded, and those uploaded while access control was off."""
    return key is None or owner_key_id is None or owner_key_id == key.id


_SLIDING_WINDOW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class RateLimiter:
    """Sliding-window counts per key: Redis sorted sets, or this process's memory when Redis is away."""

    def __init__(self, redis_url: str, window_s: float = WINDOW_S, namespace: str = "peek") -> None:
        self.namespace = namespace
        self.window_s = window_s
        self._redis: Any = None
        self._script: Any = None
        if redis_url:
            import redis.asyncio

            self._redis = redis.asyncio.Redis.from_url(
                redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            self._script = self._redis.register_script(_SLIDING_WINDOW)
        self._redis_down_until = 0.0
        self._local: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    async def retry_after(self, key_id: int, limit: int) -> float:
        """Count one request; 0 when allowed, else the seconds until the window has room."""
        if self._script is not None and time.monotonic() >= self._redis_down_until:
            try:
                wait_ms = await self._script(
                    keys=[f"{self.namespace}:rate:{key_id}"],
                    args=[int(self.window_s * 1000), limit, uuid.uuid4().hex],
                )
                return float(wait_ms) / 1000
            except Exception as exc:  # Redis away: limit per process rather than fail requests
                log.warning("rate limiter falling back to in-process counts: %s", exc)
                self._redis_down_until = time.monotonic() + REDIS_RETRY_S
        return self._local_retry_after(key_id, limit)

    def _local_retry_after(self, key_id: int, limit: int) -> float:
        now = time.monotonic()
        with self._lock:
            hits = self._local.setdefault(key_id, deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) < limit:
                hits.append(now)
                return 0.0
            return max(0.001, hits[0] + self.window_s - now)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


@dataclass
class AccessControl:
    """Whether keys are required, which key a secret belongs to, and how fast it may go."""

    settings: Settings
    sessions: Any
    limiter: RateLimiter
    _required: tuple[float, bool] = (0.0, False)
    _keys: dict[str, tuple[float, KeyRecord | None]] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, sessions: Any) -> AccessControl:
        return cls(settings, sessions, RateLimiter(settings.redis_url, namespace=settings.redis_namespace))

    async def required(self) -> bool:
        if self.settings.require_api_keys:
            return True
        checked_at, required = self._required
        if time.monotonic() - checked_at > CACHE_TTL_S:
            required = await run_in_threadpool(self._any_active_key)
            self._required = (time.monotonic(), required)
        return required

    def _any_active_key(self) -> bool:
        with self.sessions() as session:
            return active_key_count(session) > 0

    async def authenticate(self, secret: str) -> KeyRecord | None:
        digest = hash_secret(secret)
        cached = self._keys.get(digest)
        if cached and time.monotonic() - cached[0] < CACHE_TTL_S:
            return cached[1]
        record = await run_in_threadpool(self._lookup, secret)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (time.monotonic(), record)
        return record

    def _lookup(self, secret: str) -> KeyRecord | None:
        with self.sessions() as session:
            return find_active_key(session, secret)

    def limit_of(self, key: KeyRecord) -> int:
        return key.rate_per_minute or self.settings.rate_limit_per_minute


def presented_secret(scope: Scope) -> str | None:
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    if headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def _refuse(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def access_of(scope: Scope) -> AccessControl | None:
    """The app's access control, built on first use from the services the lifespan made."""
    state = scope["app"].state
    access = getattr(state, "access", None)
    if access is None and getattr(state, "services", None) is not None:
        access = state.access = AccessControl.build(state.services.settings, state.services.sessions)
    return access


class ApiKeyMiddleware:
    """Refuse ``/api/`` requests without a valid key (401) or over the key's rate (429)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or not path.startswith("/api/")
            or path in OPEN_PATHS
        ):
            await self.app(scope, receive, send)
            return
        access = access_of(scope)
        try:
            required = access is not None and await access.required()
        except Exception as exc:
            log.error("could not tell whether API keys are on: %s", type(exc).__name__)
            await _refuse(
                send, 503, "cannot check API keys right now; try again shortly", {"Retry-After": "5"}
            )
            return
        if access is None or not required:
            await self.app(scope, receive, send)
            return
        try:
            secret = presented_secret(scope)
            if not secret:
                await _refuse(
                    send,
                    401,
                    "an API key is required: send it in the X-API-Key header",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            key = await access.authenticate(secret)
        except Exception as exc:
            log.error("could not check the API key: %s", type(exc).__name__)
            await _refuse(
                send, 503, "cannot check API keys right now; try again shortly", {"Retry-After": "5"}
            )
            return
        if key is None:
            await _refuse(
                send, 401, "the API key is not valid (unknown or revoked)", {"WWW-Authenticate": "Bearer"}
            )
            return
        limit = access.limit_of(key)
        wait_s = await access.limiter.retry_after(key.id, limit)
        if wait_s > 0:
            retry_after = str(max(1, math.ceil(wait_s)))
            await _refuse(
                send,
                429,
                f"rate limit of {limit} requests per minute exceeded for this key; retry in {retry_after} s",
                {"Retry-After": retry_after},
            )
            return
        scope.setdefault("state", {})["api_key"] = key
        token = _current_key.set(key)
        try:
            await self.app(scope, receive, send)
        finally:
            _current_key.reset(token)
