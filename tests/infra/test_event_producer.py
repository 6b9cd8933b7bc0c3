"""EventProducer.send_all_sync against the real broker: every message is delivered before it
returns, and a broker that never answers is a DeliveryError, not a hang."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.broker import free_port
from infra.kafka import DeliveryError, EventProducer, ensure_topics


def read(bootstrap: str, topic: str, count: int) -> list[tuple[str, bytes, dict[str, bytes]]]:
    """The first ``count`` messages of the topic's single partition (10 s at most)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex})
    consumer.assign([TopicPartition(topic, 0, 0)])
    messages = []
    deadline = time.monotonic() + 10
    try:
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            headers = {name: value for name, value in message.headers() or []}
            messages.append((message.key().decode(), message.value(), headers))
    finally:
        consumer.close()
    return messages


def test_every_message_is_delivered_before_send_all_sync_returns(kafka_bootstrap: str) -> None:
    topic = f"test-send-all-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, 1, [topic])
    producer = EventProducer(kafka_bootstrap)
    sent = [(str(i), f"value {i}".encode(), {"ce_id": f"id-{i}"}) for i in range(20)]
    try:
        positions = producer.send_all_sync(topic, sent)
        assert len(producer._producer) == 0  # none is still queued or waiting for the broker's answer
        assert positions == [(0, offset) for offset in range(20)]  # where each landed, in order
        assert producer.send_all_sync(topic, []) == []  # nothing to send returns at once
        assert producer.send_sync(topic, "20", b"last") == (0, 20)
        assert read(kafka_bootstrap, topic, len(sent) + 2) == [
            (key, value, {name: text.encode() for name, text in headers.items()})
            for key, value, headers in sent
        ] + [("20", b"last", {})]
    finally:
        producer.close()


def test_a_broker_that_never_answers_is_a_delivery_error(kafka_bootstrap: str) -> None:
    producer = EventProducer(f"127.0.0.1:{free_port()}", delivery_timeout_s=1.0)  # nothing listens there
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError):
            producer.send_all_sync("image.analysis.completed", [("1", b"a", None), ("2", b"b", None)])
        assert time.monotonic() - started < 10
    finally:
        producer.close()  # the failed messages have left the queue: nothing to flush
