"""CORS from ``CORS_ALLOWED_ORIGINS``, and never ``*`` while API keys are on."""

from __future__ import annotations

import logging

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from infra.settings import Settings
from ingest_api.auth import access_of

log = logging.getLogger(__name__)

ANY_ORIGIN = "*"


def _cors(app: ASGIApp, origins: list[str]) -> CORSMiddleware:
    return CORSMiddleware(
        app,
        allow_origins=origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "X-API-Key", "Authorization"],
        expose_headers=["Retry-After"],
    )


class OriginPolicy:
    """Answers CORS with the configured origins; ``*`` is honoured only while keys are off."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        origins = settings.cors_origins
        self.app = app
        self.named = _cors(app, [origin for origin in origins if origin != ANY_ORIGIN])
        self.anyone = _cors(app, [ANY_ORIGIN]) if ANY_ORIGIN in origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.anyone is not None:
            access = access_of(scope)
            keys_on = True
            try:
                keys_on = access is None or await access.required()
            except Exception:  # cannot tell: assume keys are on, the safe side
                keys_on = True
            if not keys_on:
                await self.anyone(scope, receive, send)
                return
        await self.named(scope, receive, send)


def check_origins(settings: Settings) -> None:
    """Refuse to start with ``*`` when keys are required by configuration."""
    if settings.require_api_keys and ANY_ORIGIN in settings.cors_origins:
        raise ValueError(
            "CORS_ALLOWED_ORIGINS=* cannot be used with PEEK_REQUIRE_API_KEYS=1: list the allowed origins"
        )
