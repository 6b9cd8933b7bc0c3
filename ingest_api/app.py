"""The FastAPI application: routes of the earlier Peek API's REST contract, and more."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from infra.metrics import register_lag_collector
from infra.settings import Settings, get_settings
from ingest_api.admission import Admission
from ingest_api.auth import ApiKeyMiddleware
from ingest_api.cors import OriginPolicy, check_origins
from ingest_api.errors import install_error_handlers
from ingest_api.limits import BodyDeadlineMiddleware
from ingest_api.metrics import MetricsMiddleware
from ingest_api.result_reads import ResultReads
from ingest_api.routes import analyze, batch, contract, health, images, ingest_bucket, metrics, results
from ingest_api.services import Services


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings)
        app.state.services = services
        app.state.admission = Admission(settings, services.sessions)
        app.state.result_reads = reads = ResultReads(services)
        reads.completions.start()
        register_lag_collector(settings.kafka_bootstrap_servers, settings.analyzer_names)
        # What start-up built lives as long as the process: keep it out of the collector's full
        # passes, which would otherwise walk it every time and stall requests for milliseconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await reads.completions.stop()
            access = getattr(app.state, "access", None)
            if access is not None:
                await access.limiter.close()
            services.close()

    app = FastAPI(title="Peek", version="1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyDeadlineMiddleware, timeout_s=settings.request_body_timeout_s)
    # API keys inside CORS, so that a browser can read a 401 or 429.
    app.add_middleware(ApiKeyMiddleware)
    if settings.cors_origins:
        check_origins(settings)
        app.add_middleware(OriginPolicy, settings=settings)
    app.add_middleware(MetricsMiddleware)
    for module in (health, analyze, batch, ingest_bucket, results, images, contract, metrics):
        app.include_router(module.router)
    return app
