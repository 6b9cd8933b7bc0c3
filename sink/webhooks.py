"""Per-upload webhooks: POST the completed result to the image's ``callback_url``.

Deliveries run as background tasks of the sink's event loop, so a slow or failing receiver never
holds back merging. Each delivery is retried with doubling pauses; a receiver's 4xx (other than
408 and 429) is final. Deliveries still pending when the sink stops are lost (the result itself is
safe in the database and on ``image.analysis.completed``).

The body is the ``image.analysis.completed`` event. ``X-Peek-Signature: t=<unix time>,v1=<hex>``
carries HMAC-SHA256(secret, "<t>." + body), so a receiver can check origin and freshness.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

import httpx

from infra.cloudevents import SOURCE_SINK, ce_headers
from infra.metrics import WEBHOOK_DELIVERIES
from schemas.events import AnalysisCompleted
from schemas.topics import ANALYSIS_COMPLETED

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Peek-Signature"
MAX_PENDING = 10_000
MAX_URL_LENGTH = 2048


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for a body sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300.0) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and is at most ``tolerance_s`` old."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={parts.get('v1', '')}")


def callback_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook target, or None when it can."""
    from urllib.parse import urlsplit

    if len(url) > MAX_URL_LENGTH:
        return f"callback_url is longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "callback_url is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "callback_url must be an absolute http:// or https:// URL"
    if parts.username or parts.password:
        return "callback_url must not carry credentials; Peek signs its requests instead"
    return None


def _retryable(status_code: int) -> bool:
    return status_code >= 500 or status_code in (408, 429)


class WebhookSender:
    """Delivers completion webhooks in the background of an asyncio loop."""

    def __init__(
        self,
        secret: str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_in_flight: int = 64,
    ) -> None:
        self.secret = secret
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._tasks: set[asyncio.Task[bool]] = set()
        if not secret:
            log.warning("PEEK_WEBHOOK_SECRET is not set: webhooks go out unsigned")

    def submit(self, url: str, view: dict[str, Any]) -> None:
        """Start delivering one result; returns at once (call it on the loop's thread)."""
        if len(self._tasks) >= MAX_PENDING:
            log.error("webhook backlog full; dropping the webhook of image %s", view.get("id"))
            WEBHOOK_DELIVERIES.labels("dropped").inc()
            return
        body = AnalysisCompleted.model_validate(view).to_bytes()
        task = asyncio.get_running_loop().create_task(self.deliver(url, body, int(view["id"])))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, url: str, body: bytes, image_id: int) -> bool:
        """POST until the receiver answers 2xx or the attempts are spent; True when delivered."""
        event_headers = {
            name.replace("_", "-"): value.decode()
            for name, value in ce_headers(
                ANALYSIS_COMPLETED, SOURCE_SINK, str(image_id), event_id=f"{image_id}.completed"
            ).items()
        }
        for attempt in range(1, self.max_attempts + 1):
            headers = {**event_headers, "X-Peek-Attempt": str(attempt)}
            if self.secret:
                headers[SIGNATURE_HEADER] = sign(self.secret, int(time.time()), body)
            outcome = "retry"
            async with self._slots:
                try:
                    response = await self._client.post(url, content=body, headers=headers)
                    if 200 <= response.status_code < 300:
                        WEBHOOK_DELIVERIES.labels("delivered").inc()
                        return True
                    reason = f"HTTP {response.status_code}"
                    if not _retryable(response.status_code):
                        outcome = "refused"
                except httpx.HTTPError as exc:
                    reason = f"{type(exc).__name__}: {exc}"
            log.warning("webhook of image %s to %s failed (attempt %s: %s)", image_id, url, attempt, reason)
            if outcome == "refused":
                WEBHOOK_DELIVERIES.labels("refused").inc()
                return False
            if attempt < self.max_attempts:
                WEBHOOK_DELIVERIES.labels("retry").inc()
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        WEBHOOK_DELIVERIES.labels("gave_up").inc()
        log.error("gave up on the webhook of image %s to %s", image_id, url)
        return False

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()
