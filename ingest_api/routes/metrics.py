"""GET /metrics: the API's Prometheus metrics (all API processes together), consumer lag included."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from ingest_api.metrics import exposition

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    # Off the event loop: measuring consumer lag asks the broker, and several API processes'
    # numbers are read from their files.
    return Response(await run_in_threadpool(exposition), media_type=CONTENT_TYPE_LATEST)
