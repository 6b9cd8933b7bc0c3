"""GET /metrics: the API's Prometheus metrics, consumer lag of every Peek consumer group included."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    # Off the event loop: measuring consumer lag asks the broker.
    return Response(await run_in_threadpool(generate_latest), media_type=CONTENT_TYPE_LATEST)
