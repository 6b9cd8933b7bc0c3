"""GET /api/health: the state of every dependency; 503 when a critical one is down."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from infra.kafka import broker_reachable
from ingest_api.services import Services, ServicesDep

router = APIRouter()


def _probe(services: Services) -> dict[str, Any]:
    report: dict[str, Any] = {}
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        report["database"] = "connected"
    except Exception:
        report["database"] = "disconnected"
    if services.settings.redis_url:
        try:
            services.cache.check()
            report["redis"] = "connected"
        except Exception:
            report["redis"] = "disconnected"
    else:
        report["redis"] = "in-process"
    bootstrap = services.settings.kafka_bootstrap_servers
    report["kafka"] = "connected" if broker_reachable(bootstrap, timeout_s=2.0) else "disconnected"
    try:
        services.storage.check()
        report["storage"] = "connected"
    except Exception:
        report["storage"] = "disconnected"
    return report


@router.get("/api/health")
async def health(services: ServicesDep) -> JSONResponse:
    started = time.perf_counter()
    report = await run_in_threadpool(_probe, services)
    critical_down = [name for name in ("database", "kafka", "storage") if report[name] == "disconnected"]
    status = "ok"
    if critical_down:
        status = "unhealthy"
    elif report["redis"] == "disconnected":
        status = "degraded"  # reads fall through to the database
    body = {
        "status": status,
        **report,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    return JSONResponse(body, status_code=503 if critical_down else 200)
