"""The published event contract: JSON Schema per topic and the AsyncAPI document, as generated."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ingest_api.errors import ApiError
from schemas.events import EVENT_MODELS, SCHEMA_VERSION
from schemas.generate import ASYNCAPI_FILE, ASYNCAPI_JSON_FILE, GENERATED_DIR, schema_file_name

router = APIRouter()

MEDIA_TYPES = {
    ".schema.json": "application/schema+json",
    ".json": "application/json",
    ".yaml": "application/yaml",
}
PUBLISHED = {schema_file_name(topic) for topic in EVENT_MODELS} | {ASYNCAPI_FILE, ASYNCAPI_JSON_FILE}


@router.get("/api/schemas")
async def schema_index() -> JSONResponse:
    """Where each topic's JSON Schema and the AsyncAPI document are."""
    return JSONResponse(
        {
            "schema_version": SCHEMA_VERSION,
            "events": {topic: f"/api/schemas/{schema_file_name(topic)}" for topic in EVENT_MODELS},
            "asyncapi": f"/api/schemas/{ASYNCAPI_FILE}",
        }
    )


@router.get("/api/schemas/{name}")
async def schema_file(name: str) -> Response:
    """One generated file, byte for byte as committed in ``schemas/generated/``."""
    if name not in PUBLISHED:
        raise ApiError(404, f"no published schema {name!r}; see /api/schemas for the list")
    media_type = next(kind for suffix, kind in MEDIA_TYPES.items() if name.endswith(suffix))
    return Response((GENERATED_DIR / name).read_bytes(), media_type=media_type)


@router.get("/api/asyncapi.yaml")
async def asyncapi() -> Response:
    return await schema_file(ASYNCAPI_FILE)
