"""The Faust apps' Kafka consumer takes its fetch wait from the settings (Faust fixes 1500 ms)."""

from __future__ import annotations

import asyncio

import pytest

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
