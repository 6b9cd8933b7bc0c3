"""POST /api/ingest/bucket: register images already in an S3/R2 bucket, a page at a time."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ingest_api.admission import UPLOAD_SLOT
from ingest_api.bucket_ingest import ingest_page
from ingest_api.services import ServicesDep

router = APIRouter()


class BucketIngestRequest(BaseModel):
    source: str = Field(description="s3://bucket/prefix")
    start_after: str | None = Field(None, description="resume after this key (from next_start_after)")
    limit: int = Field(200, ge=1, le=1000, description="objects in this page (capped by the server)")
    reanalyze: bool = False


@router.post("/api/ingest/bucket", status_code=202, dependencies=[UPLOAD_SLOT])
async def ingest_bucket(request: BucketIngestRequest, services: ServicesDep) -> JSONResponse:
    """202 with one entry per object of the page; call again with ``next_start_after`` until null."""
    page = await ingest_page(
        services,
        request.source,
        start_after=request.start_after,
        limit=request.limit,
        reanalyze=request.reanalyze,
    )
    return JSONResponse(page, status_code=202)
