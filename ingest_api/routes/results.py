"""GET /api/results/:id: the insight record, from the cache first, then the database."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from infra.keys import KeyRecord
from infra.urls import public_url
from ingest_api.auth import may_read, request_key
from ingest_api.errors import ApiError
from ingest_api.services import Services, ServicesDep
from sink.models import PROCESSING, Image
from sink.store import result_view, results_of

router = APIRouter()


def load_result(services: Services, image_id: int) -> dict[str, Any] | None:
    """The result body from the database; None when there is no such image."""
    with services.sessions() as session:
        image = session.get(Image, image_id)
        if image is None:
            return None
        results = results_of(session, image_id)
        return result_view(image, results, public_url(services.settings, image.id, image.storage_key))


async def find_result(services: Services, image_id: int) -> dict[str, Any]:
    cached = services.cache.get(image_id)
    if cached is not None:
        return cached
    result = await run_in_threadpool(load_result, services, image_id)
    if result is None:
        raise ApiError(404, f"no image with id {image_id}")
    if result["status"] != PROCESSING:
        # Final results never change, so they can be cached for long.
        services.cache.set(image_id, result, services.settings.result_cache_ttl_s)
    return result


def respond(result: dict[str, Any]) -> JSONResponse:
    if result["status"] == PROCESSING:
        return JSONResponse({"id": result["id"], "status": PROCESSING}, status_code=202)
    return JSONResponse(result, status_code=200)


def ensure_may_read(services: Services, key: KeyRecord, image_id: int) -> None:
    """404, as for a missing image, when the image belongs to another key."""
    with services.sessions() as session:
        owner = session.execute(select(Image.owner_key_id).where(Image.id == image_id)).first()
    if owner is None or not may_read(key, owner[0]):
        raise ApiError(404, f"no image with id {image_id}")


@router.get("/api/results/{image_id}")
async def get_result(image_id: int, request: Request, services: ServicesDep) -> JSONResponse:
    """202 while processing, 200 when completed or failed, 404 for an unknown id."""
    key = request_key(request)
    if key is not None:
        await run_in_threadpool(ensure_may_read, services, key, image_id)
    return respond(await find_result(services, image_id))
