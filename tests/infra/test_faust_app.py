"""The Faust apps: the Kafka consumer takes its fetch wait from the settings (Faust fixes 1500 ms),
and what the broker refuses is sent again rather than ending the stream reader."""

from __future__ import annotations

import asyncio

import pytest

from infra import faust_app
from infra.faust_app import make_app
from infra.settings import Settings


@pytest.mark.parametrize("wait_ms", [100, 1500, 5000])
def test_consumer_fetch_wait_follows_the_setting(wait_ms: int) -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", kafka_fetch_max_wait_ms=wait_ms)
    app = make_app("peek-test-fetch-wait", settings)

    async def created_consumer_wait() -> int:
        # The consumer that Faust's worker would start (no connection is made before start()).
        kafka_consumer = app.consumer._thread._create_worker_consumer(app.transport)
        return kafka_consumer._fetch_max_wait_ms

    assert asyncio.run(created_consumer_wait()) == wait_ms


def test_fetch_wait_is_bounded() -> None:
    with pytest.raises(ValueError, match="kafka_fetch_max_wait_ms|PEEK_KAFKA_FETCH_MAX_WAIT_MS"):
        Settings(kafka_fetch_max_wait_ms=0)


class RefusingTopic:
    """Failure injection: a topic whose first round of sends is partly refused by the broker (as
    when it has just come back empty, without the topic); what it takes is recorded."""

    def __init__(self, refuse: set[int]) -> None:
        self.refuse = refuse  # which sends (counted from 0) are refused
        self.sends = 0
        self.taken: list[bytes] = []

    def get_topic_name(self) -> str:
        return "image.analysis.partial"

    async def send(self, *, key: bytes, value: bytes, headers: object, force: bool) -> asyncio.Future[None]:
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.sends in self.refuse:
            delivery.set_exception(RuntimeError("UnknownError: injected"))
        else:
            self.taken.append(value)
            delivery.set_result(None)
        self.sends += 1
        return delivery


def test_what_the_broker_refuses_is_sent_again_until_it_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust_app, "RESEND_AFTER_S", 0.01)
    topic = RefusingTopic(refuse={1, 3})  # the second message, then the first of the second round
    messages = [(str(i), f"partial {i}".encode(), None) for i in range(3)]
    asyncio.run(faust_app.send_all_delivered(topic, messages))  # type: ignore[arg-type]
    assert topic.sends == 9, "all three sent again after each round with a refusal"
    assert topic.taken[-3:] == [b"partial 0", b"partial 1", b"partial 2"], "the last round took all"
