"""Merging partials on real PostgreSQL, Redis, S3 and Kafka: idempotence, failures as data, reconciling."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import func, select

from infra.broker import EmbeddedBroker
from infra.cache import build_cache
from infra.kafka import DeliveryError, EventProducer, ensure_topics
from infra.settings import Settings
from schemas.events import AnalysisPartial
from sink.aggregator import Aggregator
from sink.db import make_engine, make_sessionmaker, migrate
from sink.models import AnalysisResult, Image
from sink.queues import QueueWatch
from tests.services import fresh_database

ANALYZERS = ["colors", "quality", "faces", "text", "scene"]


@pytest.fixture(scope="module")
def aggregator(postgres_server: str, pipeline_env: dict[str, str]) -> Iterator[Aggregator]:
    # Its own database and broker: reconciling with zero patience must not touch other tests' images,
    # and image ids (which restart at 1 in a new database) must not meet other tests' events.
    with fresh_database(postgres_server) as database_url, EmbeddedBroker() as broker:
        yield from _aggregator(database_url, pipeline_env, broker.bootstrap)


def _aggregator(
    database_url: str, pipeline_env: dict[str, str], kafka_bootstrap: str, **overrides: object
) -> Iterator[Aggregator]:
    settings = Settings(
        **{
            "DATABASE_URL": database_url,
            "REDIS_URL": pipeline_env["REDIS_URL"],
            # Its own Redis keys too: image ids restart at 1 in every new database.
            "PEEK_REDIS_NAMESPACE": f"peek-aggregator-test-{uuid.uuid4().hex[:8]}",
            "S3_ENDPOINT_URL": pipeline_env["S3_ENDPOINT_URL"],
            "R2_BUCKET_NAME": "peek-test",
            "R2_ACCESS_KEY_ID": "test",
            "R2_SECRET_ACCESS_KEY": "test",
            "S3_REGION": "us-east-1",
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "PEEK_RECONCILE_AFTER_S": 0,
            "PEEK_RECONCILE_MAX_ATTEMPTS": 1,
            **overrides,
        }
    )
    ensure_topics(kafka_bootstrap, 4)
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    producer = EventProducer(kafka_bootstrap)
    yield Aggregator(
        settings,
        make_sessionmaker(engine),
        producer,
        build_cache(settings.redis_url, settings.redis_namespace),
    )
    producer.close()
    engine.dispose()


def new_image(aggregator: Aggregator) -> int:
    with aggregator.sessions.begin() as session:
        image = Image(
            storage_key=f"originals/test/{uuid.uuid4().hex}.png",
            content_type="image/png",
            size_bytes=10,
            width=10,
            height=10,
            sha256=uuid.uuid4().hex,
            expected_analyzers=ANALYZERS,
        )
        session.add(image)
        session.flush()
        return image.id


def ok(image_id: int, analyzer: str, **result: object) -> AnalysisPartial:
    return AnalysisPartial(
        image_id=image_id, analyzer=analyzer, analyzer_version="1", status="ok", result=result, elapsed_ms=3.0
    )


def error(image_id: int, analyzer: str, reason: str) -> AnalysisPartial:
    return AnalysisPartial(
        image_id=image_id,
        analyzer=analyzer,
        analyzer_version="1",
        status="error",
        error=reason,
        elapsed_ms=1.0,
    )


def completed_events(
    kafka_bootstrap: str, image_id: int, topic: str = "image.analysis.completed"
) -> list[dict]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    found, idle = [], 0
    try:
        while idle < 4:
            message = consumer.poll(1.0)
            if message is None:
                idle += 1 if found or idle < 3 else 1
                continue
            if not message.error() and message.key() == str(image_id).encode():
                found.append(json.loads(message.value()))
    finally:
        consumer.close()
    return found


def test_last_partial_completes_and_a_duplicate_changes_nothing(
    aggregator: Aggregator, kafka_bootstrap
) -> None:
    image_id = new_image(aggregator)
    partials = [
        ok(image_id, "colors", dominant_colors=["#ffffff"], brightness=200.0),
        ok(
            image_id,
            "quality",
            sharpness_score=1.0,
            blur_level="high",
            contrast_score=2.0,
            quality_score=10.0,
        ),
        ok(image_id, "faces", faces_detected=0, face_locations=[]),
        ok(image_id, "text", text_found=False, extracted_text="", word_count=0),
        ok(image_id, "scene", scene_type="indoor", scene_confidence=0.7),
    ]
    for partial in partials[:-1]:
        assert aggregator.apply_partial(partial) is None
    completed = aggregator.apply_partial(partials[-1])
    assert completed is not None and completed["status"] == "completed"
    assert completed["insights"]["brightness"] == 200.0 and completed["insights"]["scene_type"] == "indoor"
    # Replays of every partial, even with different content, change nothing and emit nothing.
    for partial in partials:
        assert aggregator.apply_partial(partial) is None
    assert aggregator.apply_partial(ok(image_id, "colors", brightness=1.0)) is None
    with aggregator.sessions() as session:
        count = session.scalar(select(func.count()).where(AnalysisResult.image_id == image_id))
        assert count == 5
        assert session.get(Image, image_id).insights["brightness"] == 200.0
    assert aggregator.cache.get(image_id)["status"] == "completed"
    assert len(completed_events(aggregator.settings.kafka_bootstrap_servers, image_id)) == 1


def test_an_analyzer_error_leaves_its_fields_null_and_keeps_the_reason(aggregator: Aggregator) -> None:
    image_id = new_image(aggregator)
    for analyzer in ANALYZERS[:-1]:
        aggregator.apply_partial(ok(image_id, analyzer))
    completed = aggregator.apply_partial(error(image_id, "scene", "ValueError: scene model exploded"))
    assert completed is not None and completed["status"] == "completed"
    assert completed["insights"]["scene_type"] is None and completed["insights"]["scene_confidence"] is None
    assert completed["analyzers"]["scene"] == completed["analyzers"]["scene"] | {
        "status": "error",
        "error": "ValueError: scene model exploded",
    }


def test_every_analyzer_failing_fails_the_image_with_reasons(aggregator: Aggregator) -> None:
    image_id = new_image(aggregator)
    result = None
    for analyzer in ANALYZERS:
        result = aggregator.apply_partial(
            error(image_id, analyzer, f"the image could not be decoded ({analyzer})")
        )
    assert result is not None and result["status"] == "failed"
    assert (
        "every analyzer failed" in result["error"]
        and "text: the image could not be decoded" in result["error"]
    )
    assert "insights" not in result


def test_reconciler_re_emits_missing_analyzers_then_gives_up(aggregator: Aggregator, kafka_bootstrap) -> None:
    image_id = new_image(aggregator)
    aggregator.apply_partial(ok(image_id, "colors", brightness=3.0))
    assert aggregator.reconcile() >= 1  # overdue at once (PEEK_RECONCILE_AFTER_S=0): re-emitted
    reemitted = completed_events(
        aggregator.settings.kafka_bootstrap_servers, image_id, topic="image.uploaded"
    )
    assert reemitted and reemitted[-1]["expected_analyzers"] == ["quality", "faces", "text", "scene"]
    assert reemitted[-1]["attempt"] == 1
    aggregator.reconcile()  # attempts exhausted (max 1): completes with what it has, and says why
    with aggregator.sessions() as session:
        image = session.get(Image, image_id)
        assert image.status == "completed" and image.insights["brightness"] == 3.0
        assert "quality, faces, text, scene did not report" in image.error


def all_partials(image_id: int) -> list[AnalysisPartial]:
    return [
        ok(image_id, "colors", dominant_colors=["#102030"], brightness=120.0),
        ok(
            image_id, "quality", sharpness_score=5.0, blur_level="low", contrast_score=9.0, quality_score=80.0
        ),
        ok(image_id, "faces", faces_detected=0, face_locations=[]),
        ok(image_id, "text", text_found=False, extracted_text="", word_count=0),
        ok(image_id, "scene", scene_type="outdoor", scene_confidence=0.9),
    ]


def result_rows(aggregator: Aggregator, image_id: int) -> dict[str, AnalysisResult]:
    with aggregator.sessions() as session:
        rows = session.scalars(select(AnalysisResult).where(AnalysisResult.image_id == image_id))
        return {row.analyzer: row for row in rows}


def test_a_batch_with_every_partial_and_a_duplicate_completes_the_image_once(
    aggregator: Aggregator, kafka_bootstrap
) -> None:
    image_id, other_id = new_image(aggregator), new_image(aggregator)
    partials = all_partials(image_id)
    # A duplicate with other content inside the batch (the first copy counts), and partials of
    # an image that stays unfinished, mixed in.
    batch = [
        partials[0],
        ok(other_id, "colors", brightness=7.0),
        *partials[1:3],
        ok(image_id, "colors", brightness=1.0),
        *partials[3:],
        ok(other_id, "scene", scene_type="indoor", scene_confidence=0.5),
    ]
    completed = aggregator.apply_partials(batch)
    assert [view["id"] for view in completed] == [image_id]
    assert completed[0]["status"] == "completed"
    assert completed[0]["insights"]["brightness"] == 120.0
    assert completed[0]["insights"]["scene_type"] == "outdoor"
    assert set(result_rows(aggregator, image_id)) == set(ANALYZERS)
    assert result_rows(aggregator, image_id)["colors"].result["brightness"] == 120.0
    assert set(result_rows(aggregator, other_id)) == {"colors", "scene"}
    # The whole batch again, as a redelivery after a crash would bring it: nothing changes.
    assert aggregator.apply_partials(batch) == []
    with aggregator.sessions() as session:
        assert session.get(Image, image_id).status == "completed"
        assert session.get(Image, other_id).status == "processing"
    assert aggregator.cache.get(image_id)["insights"]["brightness"] == 120.0
    events = completed_events(aggregator.settings.kafka_bootstrap_servers, image_id)
    assert len(events) == 1 and events[0]["insights"]["scene_type"] == "outdoor"
    assert completed_events(aggregator.settings.kafka_bootstrap_servers, other_id) == []


def test_a_failure_while_applying_a_batch_keeps_none_of_it_and_loses_none_of_it(
    aggregator: Aggregator, kafka_bootstrap, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_id, other_id = new_image(aggregator), new_image(aggregator)
    batch = [*all_partials(image_id), ok(other_id, "colors", brightness=7.0)]
    announced: list[int] = []
    monkeypatch.setattr(aggregator, "on_completed", [lambda view, _url: announced.append(view["id"])])

    # Failure injection: the broker refuses the completion event, after the batch's rows are
    # written inside the transaction.
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise DeliveryError("broker refused the event: injected")

    with monkeypatch.context() as patch:
        patch.setattr(aggregator.producer, "send_all_sync", refuse)
        with pytest.raises(DeliveryError):
            aggregator.apply_partials(batch)
    # All or nothing: no partial of the batch is kept, no image finished, nothing announced.
    assert result_rows(aggregator, image_id) == {} and result_rows(aggregator, other_id) == {}
    with aggregator.sessions() as session:
        assert session.get(Image, image_id).status == "processing"
    assert aggregator.cache.get(image_id) is None and announced == []
    # The batch applied again (the sink retries it; its offsets were never committed) completes.
    completed = aggregator.apply_partials(batch)
    assert [view["id"] for view in completed] == [image_id] and announced == [image_id]
    assert set(result_rows(aggregator, image_id)) == set(ANALYZERS)
    assert set(result_rows(aggregator, other_id)) == {"colors"}
    assert len(completed_events(aggregator.settings.kafka_bootstrap_servers, image_id)) == 1


@pytest.fixture
def watched(postgres_server: str, pipeline_env: dict[str, str]) -> Iterator[tuple[Aggregator, list[float]]]:
    """An aggregator that asks the broker before re-emitting (as the sink's does), an hour's patience
    for what the broker cannot tell, and a clock of its own for telling when an analyzer stalled."""
    clock = [0.0]
    with fresh_database(postgres_server) as database_url, EmbeddedBroker() as broker:
        for aggregator in _aggregator(
            database_url,
            pipeline_env,
            broker.bootstrap,
            PEEK_RECONCILE_AFTER_S=3600,
            PEEK_RECONCILE_MAX_ATTEMPTS=3,
        ):
            aggregator.queues = QueueWatch(broker.bootstrap, ANALYZERS, 3600, clock=lambda: clock[0])
            yield aggregator, clock


def emitted_image(aggregator: Aggregator, quiet_for_s: float) -> tuple[int, tuple[int, int]]:
    """An image whose image.uploaded event is in Kafka, with no progress for ``quiet_for_s``."""
    image_id = new_image(aggregator)
    position = aggregator.producer.send_sync("image.uploaded", str(image_id), b"{}")
    with aggregator.sessions.begin() as session:
        image = session.get(Image, image_id)
        image.event_partition, image.event_offset = position
        image.updated_at = datetime.now(UTC) - timedelta(seconds=quiet_for_s)
    return image_id, position


def commit(aggregator: Aggregator, group: str, topic: str, partition: int, offset: int) -> None:
    """Commit an offset for a consumer group, as that group's consumer does once it is done."""
    consumer = Consumer(
        {
            "bootstrap.servers": aggregator.settings.kafka_bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
    finally:
        consumer.close()


def image_row(aggregator: Aggregator, image_id: int) -> Image:
    with aggregator.sessions() as session:
        image = session.get(Image, image_id)
        assert image is not None
        return image


def test_an_event_queued_in_front_of_a_working_analyzer_waits_however_overdue(watched) -> None:
    aggregator, clock = watched
    image_id, (partition, offset) = emitted_image(aggregator, quiet_for_s=7200)  # 2 h: twice overdue
    aggregator.apply_partials([p for p in all_partials(image_id) if p.analyzer != "quality"])
    with aggregator.sessions.begin() as session:  # the merge counted as progress; undo that
        session.get(Image, image_id).updated_at = datetime.now(UTC) - timedelta(seconds=7200)
    commit(aggregator, "peek-quality", "image.uploaded", partition, offset)  # up to it, not past it

    assert aggregator.reconcile() == 0
    clock[0] += 3599  # quality's offset there has stood still for just under PEEK_RECONCILE_AFTER_S
    assert aggregator.reconcile() == 0
    assert image_row(aggregator, image_id).emit_attempts == 0
    assert completed_events(aggregator.settings.kafka_bootstrap_servers, image_id, "image.uploaded") == [{}]

    clock[0] += 1  # an hour without moving there: stopped or stuck, so its queue is no reason to wait
    assert aggregator.reconcile() == 1
    reemitted = completed_events(aggregator.settings.kafka_bootstrap_servers, image_id, "image.uploaded")
    assert reemitted[-1]["expected_analyzers"] == ["quality"] and reemitted[-1]["attempt"] == 1
    assert image_row(aggregator, image_id).emit_attempts == 1


def test_a_partial_lost_after_its_analyzer_took_the_event_is_re_emitted_before_the_deadline(
    watched,
) -> None:
    aggregator, _clock = watched
    image_id, (partition, offset) = emitted_image(aggregator, quiet_for_s=60)  # an hour before overdue
    aggregator.apply_partials([p for p in all_partials(image_id) if p.analyzer not in ("text", "faces")])
    with aggregator.sessions.begin() as session:
        session.get(Image, image_id).updated_at = datetime.now(UTC) - timedelta(seconds=60)
    # text took the event and delivered a partial (here: any message in the partials topic), which
    # never reached the database; faces has not got to the event yet.
    partial_at = aggregator.producer.send_sync("image.analysis.partial", str(image_id), b"{}")
    commit(aggregator, "peek-text", "image.uploaded", partition, offset + 1)
    commit(aggregator, "peek-faces", "image.uploaded", partition, offset)

    assert aggregator.reconcile() == 0, "one look cannot tell lost from on its way"
    assert aggregator.reconcile() == 0, "the sink has not read past the partial yet"
    commit(aggregator, "peek-sink", "image.analysis.partial", partial_at[0], partial_at[1] + 1)
    assert aggregator.reconcile() == 1

    reemitted = completed_events(aggregator.settings.kafka_bootstrap_servers, image_id, "image.uploaded")
    assert reemitted[-1]["expected_analyzers"] == ["text"] and reemitted[-1]["attempt"] == 1
    image = image_row(aggregator, image_id)
    assert image.status == "processing" and image.emit_attempts == 1
    assert image.event_partition == partition and image.event_offset > offset, "the new event's place"
    # The re-emitted event is the one now compared: text has not taken it, so nothing more happens.
    with aggregator.sessions.begin() as session:
        session.get(Image, image_id).updated_at = datetime.now(UTC) - timedelta(seconds=60)
    assert aggregator.reconcile() == 0 and aggregator.reconcile() == 0


@pytest.fixture
def alone(postgres_server: str, pipeline_env: dict[str, str]) -> Iterator[Aggregator]:
    """An aggregator with a database and a broker of its own: it re-emits every unfinished image."""
    with fresh_database(postgres_server) as database_url, EmbeddedBroker() as broker:
        yield from _aggregator(database_url, pipeline_env, broker.bootstrap)


def uploaded_events(aggregator: Aggregator) -> dict[int, list[dict]]:
    """Every image.uploaded event in the broker, by image id (the message key)."""
    consumer = Consumer(
        {
            "bootstrap.servers": aggregator.settings.kafka_bootstrap_servers,
            "group.id": uuid.uuid4().hex,
            "enable.partition.eof": True,
        }
    )
    partitions = consumer.list_topics("image.uploaded", timeout=10).topics["image.uploaded"].partitions
    consumer.assign([TopicPartition("image.uploaded", number, 0) for number in partitions])
    found: dict[int, list[dict]] = {}
    ends = 0
    try:
        while ends < len(partitions):
            message = consumer.poll(10)
            assert message is not None, "the broker stopped answering"
            if message.error():
                ends += 1
                continue
            found.setdefault(int(message.key()), []).append(json.loads(message.value()))
    finally:
        consumer.close()
    return found


def test_a_restarted_broker_gets_back_the_events_sent_before_it_started_and_no_others(
    alone: Aggregator, monkeypatch: pytest.MonkeyPatch
) -> None:
    aggregator = alone
    monkeypatch.setattr("sink.aggregator.REEMIT_PAGE", 2)  # several pages
    started = datetime.now(UTC) - timedelta(seconds=30)  # when the broker (re)started

    def image(created_s: float, emitted_s: float | None, status: str = "processing") -> int:
        """An image created and last emitted that many seconds after the broker started."""
        image_id = new_image(aggregator)
        with aggregator.sessions.begin() as session:
            row = session.get(Image, image_id)
            row.created_at = started + timedelta(seconds=created_s)
            row.emitted_at = None if emitted_s is None else started + timedelta(seconds=emitted_s)
            row.status = status
        return image_id

    lost = image(created_s=-60, emitted_s=-60)
    from_before_emitted_at = image(created_s=-10, emitted_s=None)  # a row older than migration 0005
    re_emitted_since = image(created_s=-600, emitted_s=5)
    sent_since = image(created_s=1, emitted_s=1)
    also_lost = image(created_s=-5, emitted_s=-1)
    finished = image(created_s=-60, emitted_s=-60, status="completed")
    # A partial that arrived after the start does not make the image's other events less lost.
    aggregator.apply_partials([p for p in all_partials(lost) if p.analyzer == "colors"])

    before = datetime.now(UTC)
    assert aggregator.reemit_processing(started) == 3
    events = uploaded_events(aggregator)
    assert set(events) == {lost, from_before_emitted_at, also_lost}
    assert events[lost][0]["expected_analyzers"] == ["quality", "faces", "text", "scene"]
    assert events[from_before_emitted_at][0]["expected_analyzers"] == ANALYZERS
    assert all(len(sent) == 1 and sent[0]["attempt"] == 1 for sent in events.values())
    for image_id in (lost, from_before_emitted_at, also_lost):
        row = image_row(aggregator, image_id)
        assert row.emit_attempts == 1 and row.emitted_at >= before and row.event_offset is not None
    for image_id in (re_emitted_since, sent_since, finished):
        assert image_row(aggregator, image_id).emit_attempts == 0

    # Without a start time (a broker that forgot, noticed while running): every unfinished image.
    assert aggregator.reemit_processing() == 5
    assert set(uploaded_events(aggregator)) == {
        lost,
        from_before_emitted_at,
        re_emitted_since,
        sent_since,
        also_lost,
    }
    assert image_row(aggregator, finished).emit_attempts == 0


def test_passes_take_turns_through_a_backlog_longer_than_a_page_so_a_newer_loss_is_found(
    watched, monkeypatch: pytest.MonkeyPatch
) -> None:
    aggregator, _clock = watched
    monkeypatch.setattr("sink.aggregator.RECONCILE_PAGE", 2)
    # Four images queued in front of quality for two hours: a backlog of two pages, looked at first.
    queued = [emitted_image(aggregator, quiet_for_s=7200 - i) for i in range(4)]
    for image_id, _ in queued:
        aggregator.apply_partials([p for p in all_partials(image_id) if p.analyzer != "quality"])
    lost, (partition, offset) = emitted_image(aggregator, quiet_for_s=60)
    aggregator.apply_partials([p for p in all_partials(lost) if p.analyzer != "text"])
    with aggregator.sessions.begin() as session:  # the merges counted as progress; undo that
        for image_id, _ in queued:
            session.get(Image, image_id).updated_at = datetime.now(UTC) - timedelta(seconds=7200)
        session.get(Image, lost).updated_at = datetime.now(UTC) - timedelta(seconds=60)
    for queued_partition in {position[0] for _, position in queued}:
        earliest = min(position[1] for _, position in queued if position[0] == queued_partition)
        commit(aggregator, "peek-quality", "image.uploaded", queued_partition, earliest)
    # text took the newest image's event and its partial never reached the database.
    partial_at = aggregator.producer.send_sync("image.analysis.partial", str(lost), b"{}")
    commit(aggregator, "peek-text", "image.uploaded", partition, offset + 1)
    commit(aggregator, "peek-sink", "image.analysis.partial", partial_at[0], partial_at[1] + 1)

    handled = [aggregator.reconcile() for _ in range(3)]  # the two pages of the queued, then the rest
    assert handled == [0, 0, 1]
    reemitted = completed_events(aggregator.settings.kafka_bootstrap_servers, lost, "image.uploaded")
    assert reemitted[-1]["expected_analyzers"] == ["text"]
    assert all(image_row(aggregator, image_id).emit_attempts == 0 for image_id, _ in queued)
    # Past the last one, the next pass starts again from the longest quiet.
    assert aggregator.reconcile() == 0 and aggregator._sweep_from is not None
