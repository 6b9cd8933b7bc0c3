"""The FastAPI application: routes of the earlier Peek API's REST contract, and more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from infra.settings import Settings, get_settings
from ingest_api.errors import install_error_handlers
from ingest_api.routes import analyze, health, images, results
from ingest_api.services import Services


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings)
        app.state.services = services
        try:
            yield
        finally:
            services.close()

    app = FastAPI(title="Peek", version="1.0", lifespan=lifespan)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    for module in (health, analyze, results, images):
        app.include_router(module.router)
    return app
