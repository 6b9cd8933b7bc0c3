"""What the reconciler learns from the broker: an event still queued, or taken and its partial lost.

``verdict`` is decided from offsets alone (table below); ``QueueWatch`` reads those offsets from a
real broker, where consumer groups committed them as the analyzers and the sink do.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.broker import EmbeddedBroker, free_port
from infra.kafka import EventProducer, ensure_topics
from schemas.topics import ANALYSIS_PARTIAL, IMAGE_UPLOADED, SINK_GROUP, analyzer_group
from sink.queues import QueueLook, QueueWatch, Verdict, verdict

EVENT = (2, 10)  # the image's latest image.uploaded event: partition 2, offset 10


def look(quality: int | None, partials_end: int = 5, sink: int = 5) -> QueueLook:
    """Offsets with the quality group at ``quality`` on the event's partition (None: never committed)."""
    committed = {} if quality is None else {EVENT[0]: quality}
    return QueueLook(
        analyzers={"quality": committed},
        partials_end={0: partials_end, 1: 3},
        sink_committed={0: sink, 1: 3},
    )


@pytest.mark.parametrize(
    ("position", "now", "before", "stalled", "expected"),
    [
        # Nothing to compare: the image's age decides.
        (None, look(11), look(11), False, Verdict.UNKNOWN),
        (EVENT, None, None, False, Verdict.UNKNOWN),
        (EVENT, look(None), look(None), False, Verdict.UNKNOWN),
        # Not committed past: queued in front of the analyzer, unless it has stopped moving.
        (EVENT, look(10), look(9), False, Verdict.WAITING),
        (EVENT, look(3), None, False, Verdict.WAITING),
        (EVENT, look(10), look(10), True, Verdict.UNKNOWN),
        # Committed past: lost only once it was so at the earlier look and the sink read past that
        # look's partials.
        (EVENT, look(11), None, False, Verdict.WAITING),
        (EVENT, look(11), look(10), False, Verdict.WAITING),
        (EVENT, look(12, sink=4), look(11), False, Verdict.WAITING),
        (EVENT, look(12, partials_end=9, sink=5), look(11, partials_end=5), False, Verdict.LOST),
        (EVENT, look(11), look(11), True, Verdict.LOST),
    ],
)
def test_verdicts(position, now, before, stalled, expected) -> None:
    assert verdict(position, "quality", now, before, stalled) is expected


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets for a group the way its consumer would."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        positions = [TopicPartition(topic, partition, offset) for partition, offset in offsets.items()]
        consumer.commit(offsets=positions, asynchronous=False)
    finally:
        consumer.close()


def test_a_look_reads_each_groups_committed_offsets_and_the_partials_end() -> None:
    # A broker of its own: the offsets read here must be only the ones this test committed.
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, 3)
        producer = EventProducer(broker.bootstrap)
        try:
            landed = [producer.send_sync(ANALYSIS_PARTIAL, str(key), b"{}") for key in range(8)]
        finally:
            producer.close()
        ends = {partition: 0 for partition in range(3)}
        for partition, offset in landed:
            ends[partition] = max(ends[partition], offset + 1)
        commit(broker.bootstrap, analyzer_group("quality"), IMAGE_UPLOADED, {0: 4, 2: 9})
        commit(broker.bootstrap, SINK_GROUP, ANALYSIS_PARTIAL, {1: 2})
        clock = [100.0]
        watch = QueueWatch(broker.bootstrap, ["quality", "text"], stall_after_s=60, clock=lambda: clock[0])

        looked = watch.look()
        assert looked is not None
        first, before = looked
        assert before is None
        assert first.analyzers == {"quality": {0: 4, 2: 9}, "text": {}}
        assert first.sink_committed == {1: 2}
        # Tansu reports a partition's end as its last batch's first offset + 1; one message per batch here.
        assert first.partials_end == ends

        clock[0] += 59
        commit(broker.bootstrap, analyzer_group("quality"), IMAGE_UPLOADED, {2: 10})
        second, before = watch.look() or (None, None)
        assert before == first and second.analyzers["quality"] == {0: 4, 2: 10}
        clock[0] += 59
        watch.look()
        assert not watch.stalled("quality", 2), "it moved there 59 s ago"
        assert watch.stalled("quality", 0), "118 s without moving on partition 0"
        assert watch.stalled("text", 2), "it never committed there"
        clock[0] += 1
        assert watch.stalled("quality", 2), "60 s without moving"
        watch.release()  # readers closed while nothing is overdue; the next look opens new ones
        commit(broker.bootstrap, SINK_GROUP, ANALYSIS_PARTIAL, {1: 3})
        third, _ = watch.look() or (None, None)
        assert third.sink_committed == {1: 3} and third.analyzers["quality"] == {0: 4, 2: 10}
        watch.release()


def test_a_broker_that_cannot_be_asked_gives_no_look() -> None:
    watch = QueueWatch(f"127.0.0.1:{free_port()}", ["quality"], stall_after_s=60, timeout_s=1)
    assert watch.look() is None
    assert watch.stalled("quality", 0)
