"""UploadRecorder: rows written in groups, deduplicated within the group and against the table."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from unittest import mock

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from ingest_api import recorder as recorder_module
from ingest_api.recorder import UploadRecorder
from sink.db import make_engine, make_sessionmaker, migrate
from sink.models import FAILED, Image


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'peek.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


def row(content: str, owner: int | None = None) -> Image:
    return Image(
        storage_key=f"originals/{content}.jpg",
        original_filename=f"{content}.jpg",
        content_type="image/jpeg",
        size_bytes=10,
        width=4,
        height=3,
        sha256=hashlib.sha256(content.encode()).hexdigest(),
        expected_analyzers=["colors", "quality"],
        owner_key_id=owner,
    )


def count_rows(engine) -> int:
    with make_sessionmaker(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(Image)) or 0)


def test_uploads_arriving_together_share_one_transaction_and_one_image_per_content(engine) -> None:
    recorder = UploadRecorder(engine)
    rows = [row("a"), row("b"), row("a"), row("a", owner=7), row("b")]

    async def record_all() -> list[Image]:
        return list(await asyncio.gather(*(recorder.record(r, dedup=True) for r in rows)))

    with mock.patch.object(recorder, "_write_group", wraps=recorder._write_group) as write_group:
        recorded = asyncio.run(record_all())
    assert write_group.call_count == 1, "all five waited together and were written as one group"
    a, b, a_again, a_other_owner, b_again = recorded
    assert a is rows[0] and b is rows[1] and a_other_owner is rows[3]
    assert a_again.id == a.id and b_again.id == b.id, "the same bytes in one group give one image"
    assert a_other_owner.id not in (a.id, b.id), "another owner's upload never reuses this one"
    assert count_rows(engine) == 3
    assert all(r.status == "processing" and r.created_at is not None for r in (a, b, a_other_owner))
    # Its event is sent after the row: a broker started after this holds it (see reemit_processing).
    assert all(r.emitted_at == r.created_at for r in (a, b, a_other_owner))
    with make_sessionmaker(engine)() as session:
        assert session.get(Image, a.id).emitted_at is not None


def test_seen_bytes_return_the_earlier_image_unless_it_failed_or_reanalysis_is_asked(engine) -> None:
    recorder = UploadRecorder(engine)
    first = asyncio.run(recorder.record(row("c"), dedup=True))
    again = asyncio.run(recorder.record(row("c"), dedup=True))
    assert again.id == first.id and again is not first and again.storage_key == first.storage_key
    rerun = asyncio.run(recorder.record(row("c"), dedup=False))
    assert rerun.id != first.id
    with make_sessionmaker(engine).begin() as session:
        for image in session.scalars(select(Image)):
            image.status = FAILED
    retried = asyncio.run(recorder.record(row("c"), dedup=True))
    assert retried.id not in (first.id, rerun.id), "a failed image is analysed again, not reused"


def test_a_group_that_cannot_be_written_fails_every_upload_in_it_and_writes_nothing(engine) -> None:
    recorder = UploadRecorder(engine)
    rows = [row("d"), row("e"), row("f")]

    async def record_all() -> list[object]:
        return list(
            await asyncio.gather(*(recorder.record(r, dedup=True) for r in rows), return_exceptions=True)
        )

    # Failure injected: the insert raises as a database that went away would.
    broken = OperationalError("INSERT", {}, Exception("database is locked"))
    with mock.patch.object(recorder_module, "_values", side_effect=broken):
        outcomes = asyncio.run(record_all())
    assert all(isinstance(outcome, OperationalError) for outcome in outcomes)
    assert count_rows(engine) == 0
    # The recorder keeps working once the database does.
    assert asyncio.run(recorder.record(row("d"), dedup=True)).id is not None


def test_event_positions_ride_with_the_next_group_or_are_written_on_their_own(engine) -> None:
    recorder = UploadRecorder(engine)

    async def upload_two() -> tuple[Image, Image]:
        first = await recorder.record(row("p"), dedup=True)
        recorder.note_event(first.id, 3, 41)
        second = await recorder.record(row("q"), dedup=True)
        recorder.note_event(second.id, 1, 7)
        await asyncio.sleep(recorder_module.POSITIONS_WAIT_S + 0.2)  # no group comes: written alone
        assert recorder._writer is not None
        await recorder._writer
        return first, second

    with mock.patch.object(recorder, "_write_group", wraps=recorder._write_group) as write_group:
        first, second = asyncio.run(upload_two())
    groups = [(len(call.args[0]), call.args[1]) for call in write_group.call_args_list]
    assert groups == [
        (1, []),
        (1, [{"image_id": first.id, "partition": 3, "offset": 41}]),
        (0, [{"image_id": second.id, "partition": 1, "offset": 7}]),
    ]
    with make_sessionmaker(engine)() as session:
        positions = {i.id: (i.event_partition, i.event_offset) for i in session.scalars(select(Image))}
    assert positions == {first.id: (3, 41), second.id: (1, 7)}
