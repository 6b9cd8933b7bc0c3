"""Admission control for uploads: when Peek is too far behind, new uploads get a 503 with
Retry-After instead of joining a queue that only grows. Reads are never refused here.

Two bounds, each off when set to 0:

- the analysis backlog (``PEEK_MAX_BACKLOG``): images still ``processing``, across every API
  process. Counted in the database at most once per ``BACKLOG_REFRESH_S`` and capped at the bound,
  so the check costs one bounded index scan a second however many uploads arrive;
- the uploads this API process is handling at once (``PEEK_MAX_UPLOADS_IN_FLIGHT``), which bounds
  the request bodies and threads one process holds.

Between counts, each upload request admitted by this process is taken as one more image waiting,
so a second's burst cannot overshoot the bound. Both bounds are soft by a little still: other API
processes' uploads show only at the next count, and a batch admitted just under the bound adds
all its parts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, Request
from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from infra.settings import Settings
from ingest_api.errors import ApiError
from sink.models import PROCESSING, Image

log = logging.getLogger(__name__)

BACKLOG_REFRESH_S = 1.0
# Uploads refused for the backlog come back after it has had time to drain a little; those
# refused for this process's in-flight bound only need the current requests to finish.
BACKLOG_RETRY_AFTER_S = 10
IN_FLIGHT_RETRY_AFTER_S = 1

REFUSED = Counter("peek_uploads_refused_total", "Upload requests refused by admission control", ["reason"])
# With several API processes: the backlog as counted last by any of them (each counts the same
# database), and the in-flight uploads of the processes alive summed.
BACKLOG = Gauge(
    "peek_analysis_backlog",
    "Images processing, as admission control last counted (capped)",
    multiprocess_mode="mostrecent",
)
IN_FLIGHT = Gauge(
    "peek_uploads_in_flight", "Upload requests the API processes are handling", multiprocess_mode="livesum"
)


class Admission:
    """Decides whether this API process takes another upload request now."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.max_backlog = settings.max_backlog
        self.max_in_flight = settings.max_uploads_in_flight
        self.sessions = sessions
        self.in_flight = 0
        self._backlog = 0
        self._admitted_since_count = 0
        self._counted_at = -math.inf
        self._counting = asyncio.Lock()

    def _count_backlog(self) -> int:
        """Images processing, counted up to one past the bound (enough to compare against it)."""
        waiting = select(Image.id).where(Image.status == PROCESSING).limit(self.max_backlog + 1)
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(waiting.subquery())) or 0)

    async def backlog(self) -> int:
        """The backlog as last counted plus the uploads admitted here since; recounted when older
        than ``BACKLOG_REFRESH_S``, by one request at a time (the others use the estimate)."""
        if time.monotonic() - self._counted_at < BACKLOG_REFRESH_S or self._counting.locked():
            return self._backlog + self._admitted_since_count
        async with self._counting:
            try:
                # Reset first: an upload admitted while the count runs is then counted twice at
                # worst; one admitted before but not yet written is missed until the next count.
                admitted, self._admitted_since_count = self._admitted_since_count, 0
                self._backlog = await run_in_threadpool(self._count_backlog)
                BACKLOG.set(self._backlog)
            except Exception as exc:
                # The upload itself will meet the database problem and answer for it.
                self._admitted_since_count += admitted
                log.warning("could not count the analysis backlog: %s", type(exc).__name__)
            self._counted_at = time.monotonic()
        return self._backlog + self._admitted_since_count

    def _refuse_when_busy(self) -> None:
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            REFUSED.labels("in_flight").inc()
            raise ApiError(
                503,
                f"this API process is already handling {self.in_flight} uploads (its limit); "
                f"retry in {IN_FLIGHT_RETRY_AFTER_S} s",
                {"Retry-After": str(IN_FLIGHT_RETRY_AFTER_S)},
            )

    async def _refuse_when_behind(self) -> None:
        if self.max_backlog and await self.backlog() >= self.max_backlog:
            REFUSED.labels("backlog").inc()
            raise ApiError(
                503,
                f"analysis is behind: {self.max_backlog} or more images are waiting to be analysed "
                f"(the limit), so uploads are refused until it catches up; "
                f"retry in {BACKLOG_RETRY_AFTER_S} s",
                {"Retry-After": str(BACKLOG_RETRY_AFTER_S)},
            )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one in-flight upload for the block; 503 (ApiError) when a bound is reached."""
        self._refuse_when_busy()
        self.in_flight += 1  # before any await, so concurrent requests see it
        IN_FLIGHT.inc()
        try:
            await self._refuse_when_behind()
            self._admitted_since_count += 1
            yield
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()


async def upload_slot(request: Request) -> AsyncIterator[None]:
    """Admit the upload request (before its body is read) or answer 503."""
    admission: Admission = request.app.state.admission
    async with admission.slot():
        yield


# For a route's ``dependencies``. Function scope: the slot is given back when the route returns,
# before the response is sent, so a client's next upload never meets its previous one's slot.
UPLOAD_SLOT = Depends(upload_slot, scope="function")
