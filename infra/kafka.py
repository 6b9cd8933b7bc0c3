"""Kafka adapters on confluent-kafka: topic set-up and a producer that waits for delivery."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.topics import ALL_TOPICS

Headers = Mapping[str, str | bytes]


class DeliveryError(RuntimeError):
    """The broker did not accept a message in time."""


def ensure_topics(
    bootstrap: str, partitions: int, topics: Iterable[str] = ALL_TOPICS, timeout_s: float = 30.0
) -> None:
    """Create the topics that do not exist yet; existing topics are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})
    deadline = time.monotonic() + timeout_s
    wanted = list(topics)
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            missing = [name for name in wanted if name not in existing]
            if not missing:
                return
            futures = admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in missing]
            )
            for future in futures.values():
                try:
                    future.result(timeout=10)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def broker_reachable(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when the broker answers a metadata request."""
    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout_s)
        return True
    except KafkaException:
        return False


def _encode_headers(headers: Headers | None) -> list[tuple[str, str | bytes | None]] | None:
    if not headers:
        return None
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in headers.items()]


class EventProducer:
    """A confluent-kafka producer whose sends complete when the broker acknowledges the message.

    A background thread serves delivery callbacks; ``send`` resolves an asyncio future from it, so
    the event loop never blocks on the network.
    """

    def __init__(self, bootstrap: str, *, delivery_timeout_s: float = 10.0) -> None:
        self.delivery_timeout_s = delivery_timeout_s
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": False,
                "linger.ms": 2,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "socket.keepalive.enable": True,
            }
        )
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    async def send(
        self, topic: str, key: str, value: bytes, headers: Headers | None = None
    ) -> tuple[int, int]:
        """Produce and wait for the broker's acknowledgement; returns (partition, offset)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, int]] = loop.create_future()

        def on_delivery(error: KafkaError | None, message: object) -> None:
            def settle() -> None:
                if done.done():
                    return
                if error is not None:
                    done.set_exception(DeliveryError(f"broker refused the event: {error.str()}"))
                else:
                    done.set_result((message.partition(), message.offset()))  # type: ignore[attr-defined]

            loop.call_soon_threadsafe(settle)

        self._produce(topic, key, value, headers, on_delivery)
        try:
            return await asyncio.wait_for(done, self.delivery_timeout_s + 1)
        except TimeoutError as exc:
            raise DeliveryError("the broker did not acknowledge the event in time") from exc

    def send_sync(self, topic: str, key: str, value: bytes, headers: Headers | None = None) -> None:
        """Produce from plain (non-async) code and wait for delivery."""
        self.send_all_sync(topic, [(key, value, headers)])

    def send_all_sync(self, topic: str, messages: Sequence[tuple[str, bytes, Headers | None]]) -> None:
        """Produce every (key, value, headers) from plain code, then wait once for all deliveries:
        they share produce requests and the waits overlap. Raises the first failure."""
        if not messages:
            return
        errors: list[KafkaError] = []
        outstanding = len(messages)
        all_delivered = threading.Event()
        lock = threading.Lock()

        def on_delivery(error: KafkaError | None, _message: object) -> None:
            nonlocal outstanding
            with lock:
                if error is not None:
                    errors.append(error)
                outstanding -= 1
                if outstanding == 0:
                    all_delivered.set()

        for key, value, headers in messages:
            self._produce(topic, key, value, headers, on_delivery)
        if not all_delivered.wait(self.delivery_timeout_s + 1):
            raise DeliveryError("the broker did not acknowledge the event in time")
        if errors:
            raise DeliveryError(f"broker refused the event: {errors[0].str()}")

    def _produce(
        self,
        topic: str,
        key: str,
        value: bytes,
        headers: Headers | None,
        on_delivery: Callable[[KafkaError | None, object], None],
    ) -> None:
        """Hand one message to librdkafka; a refusal there is a DeliveryError in words."""
        try:
            self._producer.produce(
                topic, key=key, value=value, headers=_encode_headers(headers), on_delivery=on_delivery
            )
        except BufferError as exc:
            raise DeliveryError("the producer queue is full; the broker is not keeping up") from exc
        except KafkaException as exc:
            raise DeliveryError(f"could not produce: {exc}") from exc

    def close(self) -> None:
        self._producer.flush(5)
        self._closed.set()
        self._poller.join(timeout=2)
