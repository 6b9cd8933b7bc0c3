"""POST /api/analyze/batch: accept many images in one request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from ingest_api.admission import UPLOAD_SLOT
from ingest_api.bulk import accept_parts
from ingest_api.errors import ApiError
from ingest_api.forms import multipart_body, read_form
from ingest_api.services import ServicesDep

router = APIRouter()


@router.post(
    "/api/analyze/batch",
    status_code=202,
    openapi_extra=multipart_body("images", many=True),
    dependencies=[UPLOAD_SLOT],
)
async def analyze_batch(
    request: Request, services: ServicesDep, reanalyze: Annotated[bool, Query()] = False
) -> JSONResponse:
    """202 with one entry per ``images`` part, in order: ``{"id", "status"}`` or ``{"error", "filename"}``."""
    limit = services.settings.batch_max_files
    form = await read_form(request, max_files=limit, field="images")
    try:
        parts = form.getlist("images")
        if not parts:
            raise ApiError(400, "no files sent: put the images in the multipart field 'images'")
        results = await accept_parts(services, parts, reanalyze=reanalyze)
    finally:
        await form.close()
    accepted = sum("id" in entry for entry in results)
    return JSONResponse(
        {"accepted": accepted, "refused": len(results) - accepted, "results": results}, status_code=202
    )
