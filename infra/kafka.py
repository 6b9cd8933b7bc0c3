"""Kafka adapters on confluent-kafka: topic set-up and a producer that waits for delivery."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
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


@dataclass(frozen=True)
class GroupPositions:
    """Where a consumer group stands on one topic."""

    committed: dict[int, int]  # partition → committed offset, for the partitions it ever committed
    watermarks: dict[int, tuple[int, int]]  # partition → (low, high); empty unless asked for


def offsets_reader(bootstrap: str, group: str) -> Consumer:
    """A consumer that asks for ``group``'s committed offsets and never joins it."""
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})


def topic_partitions(reader: Consumer, topic: str, *, timeout_s: float = 3.0) -> list[TopicPartition] | None:
    """The partitions of ``topic`` as the broker describes them now; None when it does not exist.
    Raises KafkaException when the broker cannot be asked."""
    metadata = reader.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return None
    return [TopicPartition(topic, number) for number in sorted(metadata.partitions)]


def partition_watermarks(
    reader: Consumer, partitions: Sequence[TopicPartition], *, timeout_s: float = 3.0
) -> dict[int, tuple[int, int]]:
    """Each partition's (low, high) watermark, asked of the broker now (never the cached ones)."""
    return {
        position.partition: reader.get_watermark_offsets(position, timeout=timeout_s, cached=False)
        for position in partitions
    }


def group_positions(
    reader: Consumer, topic: str, *, watermarks: bool = True, timeout_s: float = 3.0
) -> GroupPositions | None:
    """The committed offsets on a topic of the group that ``reader`` (``offsets_reader``) asks for,
    and the topic's watermarks; None when the topic does not exist. Raises KafkaException when the
    broker cannot be asked.

    Asked through a consumer: the admin client's offset listing can abort the whole process when
    the broker goes away mid-request (librdkafka issues 3663, 4605).
    """
    partitions = topic_partitions(reader, topic, timeout_s=timeout_s)
    if partitions is None:
        return None
    committed = {
        position.partition: position.offset
        for position in reader.committed(partitions, timeout=timeout_s)
        if position.offset >= 0
    }
    marks = partition_watermarks(reader, partitions, timeout_s=timeout_s) if watermarks else {}
    return GroupPositions(committed, marks)


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

    def send_sync(
        self, topic: str, key: str, value: bytes, headers: Headers | None = None
    ) -> tuple[int, int]:
        """Produce from plain (non-async) code and wait for delivery; returns (partition, offset)."""
        return self.send_all_sync(topic, [(key, value, headers)])[0]

    def send_all_sync(
        self, topic: str, messages: Sequence[tuple[str, bytes, Headers | None]]
    ) -> list[tuple[int, int]]:
        """Produce every (key, value, headers) from plain code, then wait once for all deliveries:
        they share produce requests and the waits overlap. Returns each message's (partition,
        offset), in order; raises the first failure."""
        if not messages:
            return []
        errors: list[KafkaError] = []
        positions: list[tuple[int, int]] = [(-1, -1)] * len(messages)
        outstanding = len(messages)
        all_delivered = threading.Event()
        lock = threading.Lock()

        def on_delivery_of(index: int) -> Callable[[KafkaError | None, object], None]:
            def on_delivery(error: KafkaError | None, message: object) -> None:
                nonlocal outstanding
                with lock:
                    if error is not None:
                        errors.append(error)
                    else:
                        positions[index] = (message.partition(), message.offset())  # type: ignore[attr-defined]
                    outstanding -= 1
                    if outstanding == 0:
                        all_delivered.set()

            return on_delivery

        for index, (key, value, headers) in enumerate(messages):
            self._produce(topic, key, value, headers, on_delivery_of(index))
        if not all_delivered.wait(self.delivery_timeout_s + 1):
            raise DeliveryError("the broker did not acknowledge the event in time")
        if errors:
            raise DeliveryError(f"broker refused the event: {errors[0].str()}")
        return positions

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
