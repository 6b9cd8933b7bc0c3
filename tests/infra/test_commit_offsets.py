"""The offset a Faust app commits never passes an event still being processed, even when later
events were acknowledged first (a worker's stream readers finish their batches in any order)."""

from __future__ import annotations

import asyncio

from faust.types import TP
from faust.types.tuples import Message

from infra.faust_app import make_app
from infra.settings import Settings

TOPIC = "image.uploaded"


def commits_after(in_flight: list[int], acknowledged: list[int], committed: int = 10) -> list[int | None]:
    """Track events ``in_flight`` (offsets, in the partition's order), acknowledge them in the
    order of ``acknowledged``, and commit after each acknowledgement: the offsets committed."""
    app = make_app("peek-test-commit-offsets", Settings(kafka_bootstrap_servers="127.0.0.1:9"))
    tp = TP(TOPIC, 0)

    async def run() -> list[int | None]:
        app.topics.add(app.topic(TOPIC, key_type=bytes, value_type=bytes))
        await app.topics._update_indices()  # what subscribing does when the app starts
        consumer = app.consumer  # created without connecting
        consumer._committed_offset[tp] = committed
        messages = {
            offset: Message(TOPIC, 0, offset, 0.0, 0, {}, b"key", b"value", None, tp=tp)
            for offset in in_flight
        }
        for message in messages.values():
            consumer.track_message(message)  # as the stream does when it hands an event out
        commits = []
        for offset in acknowledged:
            assert consumer.ack(messages[offset])
            commit = consumer._new_offset(tp)
            if commit is not None:
                consumer._committed_offset[tp] = commit  # as a successful commit records it
            commits.append(commit)
        return commits

    return asyncio.run(run())


def test_nothing_is_committed_past_an_event_still_in_flight() -> None:
    # 10 is still being analysed when 11 and 12 are done: committing 13 would let a restart skip 10.
    assert commits_after([10, 11, 12], [11, 12, 10]) == [None, None, 13]


def test_acknowledgements_in_order_commit_as_they_come() -> None:
    assert commits_after([10, 11, 12], [10, 11, 12]) == [11, 12, 13]


def test_a_later_run_waits_for_the_gap_before_it() -> None:
    # 10 done, 11 in flight, 12 and 13 done: only 11 can be committed now, then the rest.
    assert commits_after([10, 11, 12, 13], [10, 12, 13, 11]) == [11, None, None, 14]
