"""Recording image rows for uploads in groups: one transaction for every upload waiting at once.

An upload's row is the last thing it needs before its event; written one transaction per upload,
the database (SQLite above all, which has one writer) becomes the queue that concurrent uploads
stand in. Here uploads hand their rows to one writer: while it commits a group, the next group
gathers, so under load each commit carries many rows and alone an upload waits for no timer.

Deduplication happens in the same transaction: a row whose bytes (sha256) the same owner already
has, in an image that did not fail, is not inserted; the earlier image is returned instead. Two
uploads of one file in one group get one image.

Where each upload's event landed in Kafka (``note_event``) is written by the same writer, in the
next group's transaction (or alone, once no group has come for ``POSITIONS_WAIT_S``): the
reconciler reads it, and no upload waits for it nor pays a transaction of its own for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, text, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from sink.models import FAILED, PROCESSING, Image, utc_now

MAX_GROUP = 128
# How long noted event positions wait for a group to ride with before they are written alone.
POSITIONS_WAIT_S = 1.0
IMAGES: Table = Image.__table__  # type: ignore[assignment]
_INSERTED = [column.key for column in IMAGES.columns if column.key != "id"]
_NOTE_POSITION = (
    update(IMAGES)
    .where(IMAGES.c.id == bindparam("image_id"))
    .values(event_partition=bindparam("partition"), event_offset=bindparam("offset"))
)


@dataclass
class _Request:
    row: Image
    dedup: bool
    done: asyncio.Future[Image] = field(repr=False)


class UploadRecorder:
    """Inserts image rows in groups; ``record`` answers with the row, or the earlier image."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._waiting: list[_Request] = []
        self._positions: list[dict[str, int]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, row: Image, *, dedup: bool) -> Image:
        """Insert ``row`` (its ``owner_key_id`` decides whose duplicates count); with ``dedup``, an
        earlier image of the same owner with the same bytes is returned instead of inserting."""
        loop = asyncio.get_running_loop()
        request = _Request(row, dedup, loop.create_future())
        self._waiting.append(request)
        self._start_writer(loop)
        return await request.done

    def note_event(self, image_id: int, partition: int, offset: int) -> None:
        """Remember where an image's event landed; written with the next group, never waited for.
        A position that is never written only costs the reconciler its shortcut for that image."""
        if not self._positions:
            loop = asyncio.get_running_loop()
            loop.call_later(POSITIONS_WAIT_S, self._start_writer, loop)
        self._positions.append({"image_id": image_id, "partition": partition, "offset": offset})

    def _start_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = loop.create_task(self._write_waiting())

    async def _write_waiting(self) -> None:
        while self._waiting or self._positions:
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            positions, self._positions = self._positions, []
            try:
                outcomes = await run_in_threadpool(self._write_group, group, positions)
            except Exception as exc:  # the whole group failed together: each upload hears it
                for request in group:
                    if not request.done.done():
                        request.done.set_exception(exc)
                continue
            for request, image in zip(group, outcomes, strict=True):
                if not request.done.done():
                    request.done.set_result(image)

    def _write_group(self, group: list[_Request], positions: list[dict[str, int]]) -> list[Image]:
        # Core statements on one connection, not the ORM unit of work: a group is one SELECT and
        # one multi-row INSERT ... RETURNING, a fraction of the ORM's cost per row.
        with self.engine.begin() as connection:
            if positions:
                # In id order, as the sink locks images: the two never wait on each other in a ring.
                connection.execute(_NOTE_POSITION, sorted(positions, key=lambda noted: noted["image_id"]))
            deduplicated = sorted({request.row.sha256 for request in group if request.dedup})
            if deduplicated and connection.dialect.name == "postgresql":
                # Serialise with other API processes recording the same bytes, so each check and
                # its insert are one step. Sorted, so two groups never wait on each other in a ring.
                for sha256 in deduplicated:
                    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:sha))"), {"sha": sha256})
            newest = _newest_unfailed(connection, deduplicated)
            outcomes: list[Image | int] = []
            fresh: list[Image] = []
            for request in group:
                row = request.row
                seen_key = (row.sha256, row.owner_key_id)
                earlier = newest.get(seen_key) if request.dedup else None
                if earlier is not None:
                    outcomes.append(earlier)
                    continue
                newest[seen_key] = row
                outcomes.append(row)
                fresh.append(row)
            if fresh:
                inserted = connection.execute(
                    insert(IMAGES).returning(IMAGES.c.id, sort_by_parameter_order=True),
                    [_values(row) for row in fresh],
                )
                for row, image_id in zip(fresh, inserted.scalars(), strict=True):
                    row.id = image_id
            earlier_ids = {outcome for outcome in outcomes if isinstance(outcome, int)}
            if not earlier_ids:
                return [outcome for outcome in outcomes if isinstance(outcome, Image)]
            with Session(bind=connection, expire_on_commit=False) as session:
                loaded = {
                    image.id: image
                    for image in session.scalars(select(Image).where(Image.id.in_(earlier_ids)))
                }
                return [loaded[outcome] if isinstance(outcome, int) else outcome for outcome in outcomes]


def _values(row: Image) -> dict[str, Any]:
    """The row's column values, with the defaults the ORM would have filled in."""
    now = utc_now()
    row.status = row.status or PROCESSING
    row.emit_attempts = row.emit_attempts or 0
    row.created_at = row.created_at or now
    row.updated_at = row.updated_at or now
    row.emitted_at = row.emitted_at or now  # the event follows the row
    return {name: getattr(row, name) for name in _INSERTED}


def _newest_unfailed(connection: Connection, shas: list[str]) -> dict[tuple[str, int | None], Image | int]:
    """For each (sha256, owner) among ``shas``: the id of the newest image that did not fail."""
    if not shas:
        return {}
    found: dict[tuple[str, int | None], Image | int] = {}
    rows = connection.execute(
        select(IMAGES.c.id, IMAGES.c.sha256, IMAGES.c.owner_key_id)
        .where(IMAGES.c.sha256.in_(shas), IMAGES.c.status != FAILED)
        .order_by(IMAGES.c.id.desc())
    )
    for image_id, sha256, owner in rows:
        found.setdefault((sha256, owner), image_id)
    return found
