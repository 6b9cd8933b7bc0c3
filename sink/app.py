"""The sink: one Faust app that folds ``image.analysis.partial`` into insight records.

Stateless: the database row is the state, so any number of sinks can share the partitions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from infra.cache import MemoryCache, build_cache
from infra.completions import CompletionPublisher
from infra.faust_app import dead_letter, make_app, take_unacked
from infra.kafka import EventProducer, ensure_topics
from infra.metrics import IMAGES_FINISHED, serve_metrics
from infra.settings import Settings
from schemas.events import SCHEMA_VERSION, AnalysisPartial
from schemas.topics import ANALYSIS_PARTIAL, SINK_GROUP
from sink.aggregator import Aggregator
from sink.broker_watch import BrokerWatch
from sink.db import make_engine, make_sessionmaker, migrate
from sink.queues import QueueWatch
from sink.webhooks import WebhookSender

log = logging.getLogger(__name__)

# Partials are merged in batches, one transaction each: up to this many, gathered for this long
# after the first arrives. Larger batches cost less per partial; the wait adds to completion latency.
MERGE_BATCH_MAX = 200
MERGE_GATHER_S = 0.05
# Widths of the result row's key columns (sink.models.AnalysisResult).
_NAME_WIDTH = 32


def parse_partial(raw: bytes) -> AnalysisPartial | str:
    """The partial, or the reason it can never be processed."""
    try:
        partial = AnalysisPartial.model_validate_json(raw)
    except Exception as exc:
        return f"malformed image.analysis.partial event: {str(exc).splitlines()[0]}"
    if partial.schema_version > SCHEMA_VERSION:
        return f"unknown schema_version {partial.schema_version} (this sink knows {SCHEMA_VERSION})"
    # A value the database refuses would fail its whole batch again and again: refuse it here.
    if not 0 < partial.image_id < 2**63:
        return f"image id {partial.image_id} is out of range"
    if len(partial.analyzer) > _NAME_WIDTH or len(partial.analyzer_version) > _NAME_WIDTH:
        return f"analyzer name or version longer than {_NAME_WIDTH} characters"
    return partial


async def merge_until_done(aggregator: Aggregator, batch: list[AnalysisPartial]) -> None:
    """Apply a batch of partials in one transaction, retrying while the database or broker is away."""
    while batch:
        try:
            await asyncio.to_thread(aggregator.apply_partials, batch)
            return
        except Exception as exc:
            log.error("could not merge %s partials (%s); retrying", len(batch), exc)
            await asyncio.sleep(1.0)


def build_sink_app(settings: Settings) -> faust.App:
    app = make_app(SINK_GROUP, settings)
    partials = app.topic(ANALYSIS_PARTIAL)
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    aggregator = Aggregator(
        settings=settings,
        sessions=make_sessionmaker(engine),
        producer=EventProducer(settings.kafka_bootstrap_servers),
        # Without Redis the API keeps its own in-process cache: a copy in this process would be
        # read by no one and only grow, so the sink then writes to none.
        cache=build_cache(settings.redis_url, settings.redis_namespace)
        if settings.redis_url
        else MemoryCache(max_items=0),
        queues=QueueWatch(
            settings.kafka_bootstrap_servers, settings.analyzer_names, settings.reconcile_after_s
        ),
    )
    serve_metrics(settings.metrics_port, "sink")
    publisher = CompletionPublisher(settings.redis_url, settings.redis_namespace)
    webhooks = WebhookSender(
        settings.webhook_secret,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
        backoff_s=settings.webhook_backoff_s,
    )
    # Hooks run in the worker thread that completed the image; webhooks belong to the event loop.
    event_loop: list[asyncio.AbstractEventLoop] = []

    def announce(view: dict[str, Any], callback_url: str | None) -> None:
        IMAGES_FINISHED.labels(view["status"]).inc()
        publisher.publish(int(view["id"]))
        if callback_url and event_loop:
            event_loop[0].call_soon_threadsafe(webhooks.submit, callback_url, view)

    aggregator.on_completed.append(announce)

    @app.agent(partials)
    async def merge(stream: faust.StreamT[bytes]) -> None:
        event_loop[:] = [asyncio.get_running_loop()]
        # Events are acknowledged by hand, once their batch is committed: a crash mid-batch leaves
        # its offsets uncommitted, so every partial of it is delivered again.
        async for events in take_unacked(stream, MERGE_BATCH_MAX, MERGE_GATHER_S):
            batch = []
            for event in events:
                parsed = parse_partial(event.value)
                if isinstance(parsed, str):
                    await dead_letter(app, event, parsed)
                else:
                    batch.append(parsed)
            await merge_until_done(aggregator, batch)
            for event in events:
                await stream.ack(event)

    @app.task
    async def recover_after_broker_restart() -> None:
        if settings.broker_ephemeral:
            count = await asyncio.to_thread(aggregator.reemit_processing, settings.broker_started_at)
            log.info("re-emitted %s unfinished images sent before the broker started", count)

    watch = BrokerWatch(settings.kafka_bootstrap_servers)

    @app.timer(interval=settings.reconcile_interval_s)
    async def recover_when_broker_forgot() -> None:
        """A broker that restarted empty lost every event in flight: re-create topics, re-emit."""
        try:
            if await asyncio.to_thread(watch.forgot):
                await asyncio.to_thread(
                    ensure_topics, settings.kafka_bootstrap_servers, settings.topic_partitions
                )
                count = await asyncio.to_thread(aggregator.reemit_processing)
                log.warning("re-emitted %s unfinished images after the broker lost its events", count)
        except Exception as exc:
            log.error("broker recovery pass failed: %s", exc)

    @app.timer(interval=settings.reconcile_interval_s)
    async def reconcile() -> None:
        event_loop[:] = [asyncio.get_running_loop()]
        try:
            handled = await asyncio.to_thread(aggregator.reconcile)
            if handled:
                log.info("reconciler handled %s overdue images", handled)
        except Exception as exc:
            log.error("reconciler pass failed: %s", exc)

    return app
