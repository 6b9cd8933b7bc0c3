"""The API's long-lived collaborators, built once at start-up and injected into routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from infra.cache import ResultCache, build_cache
from infra.kafka import EventProducer
from infra.settings import Settings
from infra.storage import Storage, build_storage
from ingest_api.recorder import UploadRecorder
from sink.db import make_engine, make_sessionmaker, migrate


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    cache: ResultCache
    producer: EventProducer
    recorder: UploadRecorder
    # Annotated copies drawn at once by this process (each a decode and a JPEG encode, up to
    # about 100 ms of CPU and 100 MB for a 24 MP photo); further requests wait their turn.
    drawing: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(2))

    @classmethod
    def build(cls, settings: Settings) -> Services:
        engine = make_engine(settings.effective_database_url)
        migrate(engine)
        sessions = make_sessionmaker(engine)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            storage=build_storage(settings),
            cache=build_cache(settings.redis_url, settings.redis_namespace),
            producer=EventProducer(
                settings.kafka_bootstrap_servers, delivery_timeout_s=settings.produce_timeout_s
            ),
            recorder=UploadRecorder(engine),
        )

    def close(self) -> None:
        self.producer.close()
        self.engine.dispose()


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain-function dependency in its thread pool, a thread hop per request
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]
