"""One Faust app per analyzer: consume ``image.uploaded``, produce ``image.analysis.partial``.

Each app is its own consumer group (``peek-<analyzer>``), so every analyzer has its own offsets
and lag and scales on its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math

import faust

from infra.cloudevents import analyzer_source, ce_headers
from infra.faust_app import dead_letter, make_app, send_all_delivered, take_unacked
from infra.metrics import ANALYZER_SECONDS, serve_metrics
from infra.settings import Settings
from infra.storage import build_storage
from schemas.events import AnalysisPartial
from schemas.topics import ANALYSIS_PARTIAL, IMAGE_UPLOADED, analyzer_group
from stream_workers.runner import AnalyzerRunner, PoisonEvent

log = logging.getLogger(__name__)


def build_worker_app(analyzer_name: str, settings: Settings) -> faust.App:
    app = make_app(analyzer_group(analyzer_name), settings)
    uploaded = app.topic(IMAGE_UPLOADED, key_type=bytes, value_type=bytes)
    partials = app.topic(ANALYSIS_PARTIAL, key_type=bytes, value_type=bytes)
    runner = AnalyzerRunner(
        analyzer_name,
        functools.partial(build_storage, settings),
        processes=settings.processes_for(analyzer_name),
        timeout_s=settings.analyzer_timeout_s,
    )

    source = analyzer_source(analyzer_name)
    serve_metrics(settings.metrics_port, f"worker-{analyzer_name}")

    async def analyzed(event: faust.EventT) -> AnalysisPartial | None:
        """The event's partial; None when it is not this analyzer's or went to the dead letters."""
        try:
            uploaded_event = runner.parse(event.value)
            if not runner.wants(uploaded_event):
                return None
            partial = await runner.handle(uploaded_event)
        except PoisonEvent as exc:
            await dead_letter(app, event, str(exc))
            return None
        ANALYZER_SECONDS.labels(analyzer_name, partial.status).observe(partial.elapsed_ms / 1000)
        return partial

    # One stream reader per analysis process, each taking the events that are already waiting (up to
    # its share of PEEK_WORKER_CONCURRENCY) as one batch: the batch's images are analysed side by
    # side, one job per image (each with its own time limit), and their partials go out in one
    # produce request before the batch is acknowledged. Under a backlog that halves the worker's
    # own CPU per image against one event at a time; a lone upload is a batch of one and waits for
    # nothing. While one reader publishes, the other keeps the processes busy.
    readers = max(1, settings.processes_for(analyzer_name))
    batch_max = max(1, math.ceil(settings.concurrency_for(analyzer_name) / readers))

    @app.agent(uploaded, concurrency=readers)
    async def analyze(stream: faust.StreamT[bytes]) -> None:
        async for events in take_unacked(stream, batch_max, within_s=0.0):
            made = await asyncio.gather(*map(analyzed, events))
            await send_all_delivered(
                partials,
                [
                    (
                        str(partial.image_id),
                        partial.to_bytes(),
                        ce_headers(ANALYSIS_PARTIAL, source, str(partial.image_id), time=partial.produced_at),
                    )
                    for partial in made
                    if partial is not None
                ],
            )
            for event in events:
                await stream.ack(event)

    return app
