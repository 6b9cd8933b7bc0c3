"""Image bytes and URLs: the original, the annotated copy, and a time-limited URL."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from infra.keys import KeyRecord
from infra.storage import ObjectNotFound, StorageError
from ingest_api.auth import may_read, request_key
from ingest_api.errors import ApiError
from ingest_api.services import Services, ServicesDep
from sink.models import PROCESSING, Image

router = APIRouter()

MIN_EXPIRATION_S = 60
MAX_EXPIRATION_S = 604_800


def _image_row(services: Services, image_id: int, key: KeyRecord | None) -> Image:
    with services.sessions() as session:
        image = session.get(Image, image_id)
    # Another key's image is answered exactly like a missing one: its existence is not revealed.
    if image is None or not may_read(key, image.owner_key_id):
        raise ApiError(404, f"no image with id {image_id}")
    return image


async def _read(services: Services, key: str) -> bytes:
    try:
        return await run_in_threadpool(services.storage.get, key)
    except ObjectNotFound:
        raise ApiError(404, "the image file is no longer in storage") from None
    except StorageError:
        raise ApiError(503, "image storage is unavailable; try again shortly", {"Retry-After": "5"}) from None


@router.get("/api/image/{image_id}/original")
async def original(image_id: int, request: Request, services: ServicesDep) -> Response:
    """The uploaded bytes, with their content type."""
    image = await run_in_threadpool(_image_row, services, image_id, request_key(request))
    data = await _read(services, image.storage_key)
    return Response(
        data,
        media_type=image.content_type,
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


@router.get("/api/image/{image_id}/annotated")
async def annotated(image_id: int, request: Request, services: ServicesDep) -> Response:
    """The image with detected faces (and text regions) boxed; the original when nothing was found."""
    image = await run_in_threadpool(_image_row, services, image_id, request_key(request))
    if image.status == PROCESSING:
        return JSONResponse({"id": image_id, "status": PROCESSING}, status_code=202)
    if image.annotated_key:
        data = await _read(services, image.annotated_key)
        return Response(data, media_type="image/jpeg", headers={"X-Peek-Annotated": "true"})
    data = await _read(services, image.storage_key)
    return Response(data, media_type=image.content_type, headers={"X-Peek-Annotated": "false"})


@router.get("/api/image/{image_id}/url")
async def image_url(
    image_id: int,
    request: Request,
    services: ServicesDep,
    expiration: Annotated[int, Query()] = 3600,
) -> JSONResponse:
    """A URL for the original: presigned (or R2 public domain) on S3, the API route on local storage."""
    if not MIN_EXPIRATION_S <= expiration <= MAX_EXPIRATION_S:
        raise ApiError(400, f"expiration must be between {MIN_EXPIRATION_S} and {MAX_EXPIRATION_S} seconds")
    image = await run_in_threadpool(_image_row, services, image_id, request_key(request))
    url = await run_in_threadpool(services.storage.url, image.storage_key, expiration)
    if url is None:
        base = services.settings.public_api_url.rstrip("/") or str(request.base_url).rstrip("/")
        url = f"{base}/api/image/{image_id}/original"
    return JSONResponse({"image_id": image_id, "url": url, "expires_in": expiration})
