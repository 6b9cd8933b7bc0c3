"""Image bytes and URLs: the original, the annotated copy, and a time-limited URL."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from infra.keys import KeyRecord
from infra.storage import ObjectNotFound, StorageError
from ingest_api.auth import may_read, request_key
from ingest_api.errors import ApiError
from ingest_api.services import Services, ServicesDep
from sink.models import PROCESSING, Image
from stream_workers.annotate import render_annotated
from stream_workers.decode import DecodeError

log = logging.getLogger(__name__)
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
    data = await _read_if_stored(services, key)
    if data is None:
        raise ApiError(404, "the image file is no longer in storage")
    return data


async def _read_if_stored(services: Services, key: str) -> bytes | None:
    """The object's bytes, None when it is not in storage; 503 when storage cannot be read."""
    try:
        return await run_in_threadpool(services.storage.get, key)
    except ObjectNotFound:
        return None
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
    """The image with detected faces (and text regions) boxed; the original when nothing was found.

    The copy is drawn on its first request and kept in storage beside the original, so a bulk job
    pays nothing for copies no one asks for (a 12 MP photo costs about 85 ms of CPU to draw).
    """
    image = await run_in_threadpool(_image_row, services, image_id, request_key(request))
    if image.status == PROCESSING:
        return JSONResponse({"id": image_id, "status": PROCESSING}, status_code=202)
    faces, regions = _boxes(image.insights)
    data = None
    if faces or regions:
        # A kept copy removed from the bucket is drawn again.
        kept = await _read_if_stored(services, image.annotated_key) if image.annotated_key else None
        data = kept or await _draw(services, image, faces, regions)
    if data is not None:
        return Response(data, media_type="image/jpeg", headers={"X-Peek-Annotated": "true"})
    data = await _read(services, image.storage_key)
    return Response(data, media_type=image.content_type, headers={"X-Peek-Annotated": "false"})


def _boxes(insights: dict[str, Any] | None) -> tuple[list[dict], list[dict]]:
    """The face boxes, and the text regions when text was found, in original-image pixels."""
    insights = insights or {}
    faces = insights.get("face_locations") or []
    regions = (insights.get("text_regions") or []) if insights.get("text_found") else []
    return faces, regions


def annotated_key(storage_key: str) -> str:
    """Where the annotated copy of an original is kept: beside it, under ``annotated/``, as JPEG."""
    return storage_key.replace("originals/", "annotated/", 1).rsplit(".", 1)[0] + ".jpg"


async def _draw(services: Services, image: Image, faces: list[dict], regions: list[dict]) -> bytes | None:
    """Draw the boxes on the original and keep the copy; None when the original cannot be decoded."""
    original = await _read(services, image.storage_key)
    try:
        marked = await anyio.to_thread.run_sync(
            render_annotated, original, image.width, image.height, faces, regions, limiter=services.drawing
        )
    except DecodeError as exc:
        log.warning("could not draw the annotated copy of image %s: %s", image.id, exc)
        return None
    key = annotated_key(image.storage_key)
    try:
        await run_in_threadpool(services.storage.put, key, marked, "image/jpeg")
        await run_in_threadpool(_record_annotated_key, services, image.id, key)
    except (StorageError, SQLAlchemyError) as exc:
        # The copy is still served; the next request draws it again.
        log.warning("could not keep the annotated copy of image %s: %s", image.id, exc)
    return marked


def _record_annotated_key(services: Services, image_id: int, key: str) -> None:
    with services.sessions.begin() as session:
        session.execute(update(Image).where(Image.id == image_id).values(annotated_key=key))


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
