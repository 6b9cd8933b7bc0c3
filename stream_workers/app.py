"""One Faust app per analyzer: consume ``image.uploaded``, produce ``image.analysis.partial``.

Each app is its own consumer group (``peek-<analyzer>``), so every analyzer has its own offsets
and lag and scales on its own.
"""

from __future__ import annotations

import functools
import logging

import faust

from infra.cloudevents import analyzer_source, ce_headers
from infra.faust_app import dead_letter, make_app, send_delivered
from infra.metrics import ANALYZER_SECONDS, serve_metrics
from infra.settings import Settings
from infra.storage import build_storage
from schemas.topics import ANALYSIS_PARTIAL, IMAGE_UPLOADED
from stream_workers.runner import AnalyzerRunner, PoisonEvent

log = logging.getLogger(__name__)


def build_worker_app(analyzer_name: str, settings: Settings) -> faust.App:
    app = make_app(f"peek-{analyzer_name}", settings)
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

    @app.agent(uploaded, concurrency=settings.concurrency_for(analyzer_name))
    async def analyze(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                uploaded_event = runner.parse(event.value)
                if not runner.wants(uploaded_event):
                    continue
                partial = await runner.handle(uploaded_event)
            except PoisonEvent as exc:
                await dead_letter(app, event, str(exc))
                continue
            ANALYZER_SECONDS.labels(analyzer_name, partial.status).observe(partial.elapsed_ms / 1000)
            headers = ce_headers(ANALYSIS_PARTIAL, source, str(partial.image_id), time=partial.produced_at)
            await send_delivered(partials, str(partial.image_id), partial.to_bytes(), headers)

    return app
