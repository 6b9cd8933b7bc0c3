"""Reading results for the REST API: one, many, a filtered listing, and waiting for one to finish.

Final results (completed or failed) never change, so they are kept, already encoded and with their
ETag, in a process-local LRU in front of the shared cache (Redis) and the database. A processing
result is always read from the database and never cached, so it is never served stale.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from sqlalchemy import Select, bindparam, or_, select, tuple_
from starlette.concurrency import run_in_threadpool

from infra.completions import CompletionWaiter
from infra.urls import public_url
from ingest_api import metrics
from ingest_api.errors import ApiError
from ingest_api.services import Services
from sink.models import COMPLETED, FAILED, PROCESSING, AnalysisResult, Image
from sink.store import result_view

MAX_BATCH_IDS = 500
MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_WAIT_S = 30.0
# Without Redis there is no completion notice between processes: a waiting request then looks at
# the database this often (one cheap primary-key read per waiting request per interval).
POLL_INTERVAL_S = 1.0
FINAL_MAX_AGE_S = 24 * 3600
STATUSES = (PROCESSING, COMPLETED, FAILED)


@dataclass(frozen=True)
class Encoded:
    """A result as the API sends it: status code, JSON bytes and, for final results, an ETag."""

    status_code: int
    body: bytes
    etag: str | None = None

    @property
    def final(self) -> bool:
        return self.etag is not None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def encode(view: dict[str, Any]) -> Encoded:
    if view["status"] == PROCESSING:
        return Encoded(202, _dumps({"id": view["id"], "status": PROCESSING}))
    body = _dumps(view)
    return Encoded(200, body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')


class FinalResults:
    """A bounded, thread-safe LRU of encoded final results, keyed by image id."""

    def __init__(self, max_items: int = 20_000) -> None:
        self.max_items = max_items
        self._items: OrderedDict[int, Encoded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, image_id: int) -> Encoded | None:
        with self._lock:
            found = self._items.get(image_id)
            if found is not None:
                self._items.move_to_end(image_id)
            return found

    def put(self, image_id: int, encoded: Encoded) -> None:
        with self._lock:
            self._items[image_id] = encoded
            self._items.move_to_end(image_id)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)


@dataclass(frozen=True)
class ListFilters:
    status: str | None = None
    scene_type: str | None = None
    has_faces: bool | None = None
    text_found: bool | None = None
    since: datetime | None = None
    limit: int = DEFAULT_PAGE
    cursor: str | None = None


def parse_ids(raw: str) -> list[int]:
    """``1,2,3`` as distinct ids in the order given; 400 for anything else."""
    ids: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or len(part) > 18:
            raise ApiError(400, f"ids must be comma-separated image ids; {part[:40]!r} is not one")
        ids.append(int(part))
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise ApiError(400, "ids is empty: give at least one image id, e.g. ids=1,2,3")
    if len(ids) > MAX_BATCH_IDS:
        raise ApiError(400, f"at most {MAX_BATCH_IDS} ids per request; got {len(ids)}")
    return ids


def encode_cursor(created_at: datetime, image_id: int) -> str:
    moment = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
    raw = json.dumps([moment.isoformat(), image_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, image_id = json.loads(raw)
        return datetime.fromisoformat(moment), int(image_id)
    except (binascii.Error, ValueError, TypeError, json.JSONDecodeError):
        raise ApiError(400, "cursor is not one this API handed out; start again without it") from None


def _readable(statement: Select[Any], owner_key_id: int | None) -> Select[Any]:
    """Restrict to what an API key may read: its own images and those uploaded without a key."""
    if owner_key_id is None:
        return statement
    return statement.where(or_(Image.owner_key_id.is_(None), Image.owner_key_id == owner_key_id))


class ResultReads:
    """The result-reading side of the API (one per process)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.local = FinalResults()
        self.completions = CompletionWaiter(services.settings.redis_url, services.settings.redis_namespace)

    # --- the database -------------------------------------------------------------------------

    def _views(self, images: Sequence[Image]) -> list[dict[str, Any]]:
        """Result views of loaded image rows, with their analyzer reports in one query."""
        ids = [image.id for image in images]
        reports: dict[int, dict[str, AnalysisResult]] = {image_id: {} for image_id in ids}
        if ids:
            with self.services.sessions() as session:
                rows = session.scalars(select(AnalysisResult).where(AnalysisResult.image_id.in_(ids)))
                for row in rows:
                    reports[row.image_id][row.analyzer] = row
        settings = self.services.settings
        return [
            result_view(image, reports[image.id], public_url(settings, image.id, image.storage_key))
            for image in images
        ]

    def load(self, image_ids: list[int], owner_key_id: int | None = None) -> dict[int, dict[str, Any]]:
        """Views of the images that exist (and the key may read), keyed by id: two indexed queries."""
        with self.services.sessions() as session:
            statement = _readable(select(Image).where(Image.id.in_(image_ids)), owner_key_id)
            images = list(session.scalars(statement))
        return {view["id"]: view for view in self._views(images)}

    def _remember(self, views: list[dict[str, Any]]) -> dict[int, Encoded]:
        """Encode views; keep final ones in the local LRU (the shared cache gets them too)."""
        encoded = {}
        ttl = self.services.settings.result_cache_ttl_s
        for view in views:
            result = encode(view)
            encoded[view["id"]] = result
            if result.final:
                self.local.put(view["id"], result)
                self.services.cache.set(view["id"], view, ttl)
        return encoded

    # --- one result ---------------------------------------------------------------------------

    async def one(self, image_id: int) -> Encoded:
        """The result of one image: local LRU, shared cache, then the database. 404 when unknown."""
        found = self.local.get(image_id)
        if found is not None:
            metrics.cache_hit("local")
            return found
        metrics.cache_miss("local")
        cached = self.services.cache.get(image_id)
        if cached is not None and cached.get("status") != PROCESSING:
            metrics.cache_hit("shared")
            result = encode(cached)
            self.local.put(image_id, result)
            return result
        metrics.cache_miss("shared")
        views = await run_in_threadpool(self.load, [image_id])
        if image_id not in views:
            raise ApiError(404, f"no image with id {image_id}")
        return self._remember([views[image_id]])[image_id]

    async def wait(self, image_id: int, wait_s: float) -> Encoded:
        """The result once it is final, or as it is after ``wait_s`` seconds.

        With Redis the request sleeps until the sink's completion notice and reads the result once
        more at its deadline: no database load while it waits. Without Redis it polls every
        ``POLL_INTERVAL_S``.
        """
        deadline = time.monotonic() + min(wait_s, MAX_WAIT_S)
        with self.completions.subscription(image_id) as notice:
            result = await self.one(image_id)
            metrics.LONG_POLLS_WAITING.inc()
            try:
                while not result.final and (remaining := deadline - time.monotonic()) > 0:
                    if self.completions.connected.is_set():
                        notice.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(notice.wait(), remaining)
                    else:
                        await asyncio.sleep(min(POLL_INTERVAL_S, remaining))
                    result = await self.one(image_id)
            finally:
                metrics.LONG_POLLS_WAITING.dec()
        return result

    # --- many results -------------------------------------------------------------------------

    async def many(self, image_ids: list[int], owner_key_id: int | None = None) -> bytes:
        """``{"results": [...], "not_found": [...]}`` for up to ``MAX_BATCH_IDS`` ids, in the order
        asked, each result as the single-result route shows it."""
        found: dict[int, Encoded] = {}
        if owner_key_id is None:  # with a key, ownership needs the rows anyway
            for image_id in image_ids:
                local = self.local.get(image_id)
                if local is not None:
                    found[image_id] = local
            metrics.cache_hit("local", len(found))
            metrics.cache_miss("local", len(image_ids) - len(found))
            wanted = [image_id for image_id in image_ids if image_id not in found]
            if wanted:
                shared = self.services.cache.get_many(wanted)
                for image_id, view in shared.items():
                    if view.get("status") != PROCESSING:
                        found[image_id] = encode(view)
                        self.local.put(image_id, found[image_id])
                metrics.cache_hit("shared", len(found) - (len(image_ids) - len(wanted)))
        wanted = [image_id for image_id in image_ids if image_id not in found]
        if wanted:
            metrics.cache_miss("shared", len(wanted))
            views = await run_in_threadpool(self.load, wanted, owner_key_id)
            found.update(self._remember(list(views.values())))
        bodies = [found[image_id].body for image_id in image_ids if image_id in found]
        missing = [image_id for image_id in image_ids if image_id not in found]
        return b'{"results":[' + b",".join(bodies) + b'],"not_found":' + _dumps(missing) + b"}"

    # --- listing ------------------------------------------------------------------------------

    def _page(self, filters: ListFilters, owner_key_id: int | None) -> tuple[list[Image], str | None]:
        statement = select(Image)
        if filters.status:
            statement = statement.where(Image.status == filters.status)
        if filters.scene_type:
            statement = statement.where(Image.scene_type == filters.scene_type)
        if filters.has_faces is not None:
            statement = statement.where(
                Image.faces_detected > 0 if filters.has_faces else Image.faces_detected == 0
            )
        if filters.text_found is not None:
            statement = statement.where(Image.text_found.is_(filters.text_found))
        if filters.since is not None:
            statement = statement.where(Image.created_at >= filters.since)
        if filters.cursor:
            created_at, image_id = decode_cursor(filters.cursor)
            # A row comparison, so PostgreSQL walks the (created_at, id) index from the cursor.
            statement = statement.where(
                tuple_(Image.created_at, Image.id)
                < tuple_(
                    bindparam("cursor_at", created_at, type_=Image.created_at.type),
                    bindparam("cursor_id", image_id, type_=Image.id.type),
                )
            )
        statement = _readable(statement, owner_key_id)
        statement = statement.order_by(Image.created_at.desc(), Image.id.desc()).limit(filters.limit + 1)
        with self.services.sessions() as session:
            images = list(session.scalars(statement))
        next_cursor = None
        if len(images) > filters.limit:
            images = images[: filters.limit]
            next_cursor = encode_cursor(images[-1].created_at, images[-1].id)
        return images, next_cursor

    def listing(self, filters: ListFilters, owner_key_id: int | None = None) -> bytes:
        """``{"results": [...], "next_cursor": ...}``, newest first; ``next_cursor`` is null on the
        last page. Runs in a worker thread."""
        images, next_cursor = self._page(filters, owner_key_id)
        known = {image.id: self.local.get(image.id) for image in images}
        to_build = [image for image in images if known[image.id] is None]
        built = self._remember(self._views(to_build)) if to_build else {}
        bodies = [(known[image.id] or built[image.id]).body for image in images]
        return b'{"results":[' + b",".join(bodies) + b'],"next_cursor":' + _dumps(next_cursor) + b"}"


def validate_filters(filters: ListFilters) -> ListFilters:
    if filters.status is not None and filters.status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}; got {filters.status!r}")
    if filters.since is not None and filters.since.tzinfo is None:
        return ListFilters(**{**filters.__dict__, "since": filters.since.replace(tzinfo=UTC)})
    return filters


async def get_result_reads(request: Request) -> ResultReads:
    # async: FastAPI would run a plain function in its thread pool, one thread hop per read
    return request.app.state.result_reads  # type: ignore[no-any-return]
