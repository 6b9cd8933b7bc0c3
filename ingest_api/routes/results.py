"""GET /api/results/:id (optionally waiting), GET /api/results?ids=... and the filtered listing."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from infra.keys import KeyRecord
from ingest_api.auth import may_read, request_key
from ingest_api.errors import ApiError
from ingest_api.result_reads import (
    FINAL_MAX_AGE_S,
    MAX_PAGE,
    MAX_WAIT_S,
    Encoded,
    ListFilters,
    ResultReads,
    get_result_reads,
    parse_ids,
    validate_filters,
)
from ingest_api.services import Services, ServicesDep
from sink.models import Image

router = APIRouter()

ResultReadsDep = Annotated[ResultReads, Depends(get_result_reads)]
JSON = "application/json"


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def respond(result: Encoded, if_none_match: str | None = None, shared: bool = True) -> Response:
    """202 for processing (never cached), 200 or 304 with an ETag for a final result."""
    if result.etag is None:
        return Response(result.body, result.status_code, {"Cache-Control": "no-store"}, media_type=JSON)
    # Final results never change; a result read with an API key is not for shared caches.
    scope = "public" if shared else "private"
    headers = {"ETag": result.etag, "Cache-Control": f"{scope}, max-age={FINAL_MAX_AGE_S}, immutable"}
    if _etag_matches(if_none_match, result.etag):
        return Response(status_code=304, headers=headers)
    return Response(result.body, result.status_code, headers, media_type=JSON)


def ensure_may_read(services: Services, key: KeyRecord, image_id: int) -> None:
    """404, as for a missing image, when the image belongs to another key."""
    with services.sessions() as session:
        owner = session.execute(select(Image.owner_key_id).where(Image.id == image_id)).first()
    if owner is None or not may_read(key, owner[0]):
        raise ApiError(404, f"no image with id {image_id}")


@router.get("/api/results")
async def list_results(
    request: Request,
    reads: ResultReadsDep,
    ids: Annotated[str | None, Query(description="Comma-separated ids, at most 500")] = None,
    status: Annotated[str | None, Query(description="processing, completed or failed")] = None,
    scene_type: str | None = None,
    has_faces: bool | None = None,
    text_found: bool | None = None,
    since: Annotated[datetime | None, Query(description="Uploaded at or after (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    """``?ids=1,2,3``: those results in that order (``not_found`` lists the others). Otherwise a
    filtered listing, newest first, paged with ``cursor``."""
    key = request_key(request)
    owner = key.id if key is not None else None
    if ids is not None:
        if any(value is not None for value in (status, scene_type, has_faces, text_found, since, cursor)):
            raise ApiError(400, "ids cannot be combined with listing filters or a cursor")
        body = await reads.many(parse_ids(ids), owner)
    else:
        filters = validate_filters(
            ListFilters(status, scene_type, has_faces, text_found, since, limit, cursor)
        )
        body = await run_in_threadpool(reads.listing, filters, owner)
    return Response(body, 200, {"Cache-Control": "no-store"}, media_type=JSON)


@router.get("/api/results/{image_id}")
async def get_result(
    image_id: int,
    request: Request,
    services: ServicesDep,
    reads: ResultReadsDep,
    wait: Annotated[
        float | None, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for a final result")
    ] = None,
) -> Response:
    """202 while processing, 200 when completed or failed (304 for a matching If-None-Match), 404
    for an unknown id. With ``?wait=S`` the answer comes when the result is final, or after S s."""
    key = request_key(request)
    if key is not None:
        await run_in_threadpool(ensure_may_read, services, key, image_id)
    result = await (reads.wait(image_id, wait) if wait else reads.one(image_id))
    return respond(result, request.headers.get("if-none-match"), shared=key is None)
