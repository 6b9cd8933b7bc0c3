"""Noticing a memory-only broker that restarted empty, on a real broker restarted on its port."""

from __future__ import annotations

from infra.broker import EmbeddedBroker, free_port
from infra.kafka import EventProducer, ensure_topics
from schemas.topics import ANALYSIS_PARTIAL, IMAGE_UPLOADED
from sink.broker_watch import BrokerWatch


def send(bootstrap: str, topic: str, count: int) -> None:
    producer = EventProducer(bootstrap)
    try:
        for key in range(count):
            producer.send_sync(topic, str(key), b"{}")
    finally:
        producer.close()


def test_a_broker_back_empty_is_noticed_once_and_new_events_are_not_a_loss() -> None:
    port = free_port()
    broker = EmbeddedBroker(port).start()
    watch = BrokerWatch(broker.bootstrap)
    try:
        ensure_topics(broker.bootstrap, 2)
        send(broker.bootstrap, IMAGE_UPLOADED, 4)
        assert not watch.forgot(), "the first look has nothing to compare with"
        send(broker.bootstrap, ANALYSIS_PARTIAL, 3)
        assert not watch.forgot(), "watermarks that grew lost nothing"

        broker.stop()
        assert not watch.forgot(), "an unreachable broker is not taken for an empty one"
        broker = EmbeddedBroker(port).start()
        assert watch.forgot(), "the topics are gone"

        ensure_topics(broker.bootstrap, 2)
        assert not watch.forgot(), "noticed once; empty topics compared with empty topics"
        send(broker.bootstrap, IMAGE_UPLOADED, 2)
        assert not watch.forgot()
    finally:
        watch.close()
        broker.stop()


def test_a_topic_whose_end_went_back_is_a_loss_even_when_it_exists() -> None:
    port = free_port()
    broker = EmbeddedBroker(port).start()
    watch = BrokerWatch(broker.bootstrap, topics=[IMAGE_UPLOADED])
    try:
        ensure_topics(broker.bootstrap, 1)
        send(broker.bootstrap, IMAGE_UPLOADED, 5)
        assert not watch.forgot()
        broker.stop()
        broker = EmbeddedBroker(port).start()
        ensure_topics(broker.bootstrap, 1)  # re-created before the watch looks, as a restart script might
        send(broker.bootstrap, IMAGE_UPLOADED, 1)
        assert watch.forgot(), "the end went back from 5 to 1"
    finally:
        watch.close()
        broker.stop()
