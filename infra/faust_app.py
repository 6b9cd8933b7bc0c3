"""Faust app construction shared by the analyzer workers and the sink."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any, TypeVar, cast

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.utils.terminal import SpinnerHandler

from infra.settings import Settings
from schemas.topics import DEAD_LETTER

log = logging.getLogger(__name__)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes a fixed fetch_max_wait_ms=1500; aiokafka hands this attribute to its
        # fetcher when the consumer starts, so replacing it here is the same as passing it.
        consumer._fetch_max_wait_ms = cast(_Transport, transport).fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``, never past an event that is still being processed.

        Faust commits the first run of consecutive acknowledged offsets, and its check for an
        unacknowledged offset in front of that run lets a gap of one through (``min(acked) -
        committed > 1``). Events acknowledged out of order (a worker's stream readers finish
        their batches in any order) could then commit past one still in flight, and a restart
        would skip it. Nothing is committed while the oldest event in flight precedes them all.
        """
        acked = self._acked[tp]
        in_flight = [message.offset for message in self._unacked_messages if message.tp == tp]
        if acked and in_flight and min(in_flight) < min(acked):
            return None
        return cast("int | None", super()._new_offset(tp))


class _Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, with the consumer's fetch wait a setting."""

    Consumer = _Consumer
    fetch_max_wait_ms = 1500


def make_app(app_id: str, settings: Settings) -> faust.App:
    """A Faust app tuned for Peek: no web server, short group timeouts, explicit topics."""
    session_timeout = settings.kafka_session_timeout_s
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        web_enabled=False,
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        topic_allow_declare=False,
        broker_session_timeout=session_timeout,
        # A third of the session timeout, Kafka's own ratio: every consumer sends each heartbeat to
        # the broker, busy or idle, so a shorter interval is a standing cost on both sides.
        broker_heartbeat_interval=max(0.5, session_timeout / 3),
        broker_rebalance_timeout=max(10.0, session_timeout * 2),
        broker_request_timeout=max(30.0, session_timeout * 5),
        broker_commit_every=100,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
    )
    transport = _Transport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = settings.kafka_fetch_max_wait_ms
    app.transport = transport

    @app.task
    async def quiet_debug_records() -> None:
        """faust.Worker leaves the root logger at DEBUG for its terminal spinner (which it stops
        once started), so every debug call of aiokafka, faust and mode builds a record that no
        handler prints: a cost on every request and timer tick. Put the level back to the
        handlers' own."""
        levels = [
            handler.level for handler in logging.root.handlers if not isinstance(handler, SpinnerHandler)
        ]
        logging.root.setLevel(min(levels, default=logging.WARNING) or logging.WARNING)

    return app


async def take_unacked(
    stream: faust.StreamT[Any], max_events: int, within_s: float
) -> AsyncIterator[list[faust.EventT]]:
    """Batches of up to ``max_events`` events, gathered for ``within_s`` seconds after the first,
    that the caller acknowledges itself (``await stream.ack(event)``) once their outcome is durable.

    Faust's ``take`` acknowledges a batch when the loop asks for the next one, or when the loop is
    left by an exception: a crash mid-batch would then lose it. Its ``noack_take`` leaves the
    acknowledging to the caller but wakes every ``within_s`` even when nothing arrives, and on
    an idle sink those wake-ups were most of its CPU. Here the events come from a stream whose
    acknowledging is manual (``noack``), and the waiting is ``gather_batches``'s.
    """
    manual = cast("faust.Stream[Any]", stream).noack()
    async for events in gather_batches(manual.events(), max_events, within_s):
        yield events


_T = TypeVar("_T")
_ENDED = object()


async def gather_batches(
    items: AsyncIterable[_T], max_items: int, within_s: float
) -> AsyncIterator[list[_T]]:
    """Batches of up to ``max_items``: wait, with no timer running, for a first item, then take
    what else arrives within ``within_s``. A task reads up to ``max_items`` ahead meanwhile, so the
    next batch gathers while the caller works on this one. Ends when ``items`` ends; raises what
    ``items`` raised, after the items before the error."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[_T] = asyncio.Queue(max_items)

    async def read_ahead() -> None:
        async for item in items:
            await ready.put(item)

    reading = asyncio.ensure_future(read_ahead())
    try:
        while (first := await _next_or_end(ready, reading)) is not _ENDED:
            batch = [cast(_T, first)]
            deadline = loop.time() + within_s
            while len(batch) < max_items:
                if not ready.empty():
                    batch.append(ready.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or reading.done():
                    break
                try:
                    batch.append(await asyncio.wait_for(ready.get(), remaining))
                except TimeoutError:
                    break
            yield batch
    finally:
        reading.cancel()


async def _next_or_end(ready: asyncio.Queue[_T], reading: asyncio.Future[None]) -> _T | object:
    """The next item, waiting as long as it takes; ``_ENDED`` once the reader has finished and
    everything it read was taken; the reader's exception if it failed."""
    if ready.empty() and not reading.done():
        getting = asyncio.ensure_future(ready.get())
        either: list[asyncio.Future[Any]] = [getting, reading]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if getting.done():
            return getting.result()
        # Cancelled before it took anything: an item put meanwhile stays in the queue.
        getting.cancel()
    if not ready.empty():
        return ready.get_nowait()
    reading.result()
    return _ENDED


async def send_delivered(
    topic: faust.TopicT, key: str, value: bytes, headers: dict[str, bytes] | None = None
) -> None:
    """Produce and wait until the broker acknowledges, so offsets commit only after our output exists."""
    await send_all_delivered(topic, [(key, value, headers)])


# How long to wait before sending again what the broker did not take.
RESEND_AFTER_S = 1.0


async def send_all_delivered(
    topic: faust.TopicT, messages: Sequence[tuple[str, bytes, dict[str, bytes] | None]]
) -> None:
    """Produce every (key, value, headers), then wait until the broker acknowledges them all.
    Handed to the producer together, they share produce requests.

    What the broker refuses (away, or back empty and without the topic yet) is sent again, all of
    it, until it is taken: the caller acknowledges its events only after this returns, and an
    exception here would end the stream reader that called it while its events stay unacknowledged
    in memory, neither processed nor given to anyone else. Duplicates are harmless downstream.
    """
    while True:
        try:
            pending = [
                await topic.send(key=key.encode(), value=value, headers=headers, force=True)
                for key, value, headers in messages
            ]
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
        except Exception as exc:
            outcomes = [exc]
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if not failures:
            return
        log.error(
            "could not publish %s messages to %s (%r); sending them again in %.0f s",
            len(messages),
            topic.get_topic_name(),
            failures[0],
            RESEND_AFTER_S,
        )
        await asyncio.sleep(RESEND_AFTER_S)


async def dead_letter(app: faust.App, event: faust.EventT, reason: str) -> None:
    """Park an event that can never be processed, with the reason, and move on."""
    log.error(
        "dead-lettering %s[%s]@%s: %s",
        event.message.topic,
        event.message.partition,
        event.message.offset,
        reason,
    )
    headers: dict[str, Any] = {
        "peek_reason": reason.encode(),
        "peek_source_topic": event.message.topic.encode(),
        "peek_source_partition": str(event.message.partition).encode(),
        "peek_source_offset": str(event.message.offset).encode(),
        "peek_consumer": app.conf.id.encode(),
    }
    value = event.value if isinstance(event.value, bytes) else str(event.value).encode()
    key = event.key if isinstance(event.key, bytes) else b""
    await send_delivered(
        app.topic(DEAD_LETTER, key_type=bytes, value_type=bytes), key.decode(errors="replace"), value, headers
    )
