"""POST /api/analyze: accept one image for analysis."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from ingest_api.admission import UPLOAD_SLOT
from ingest_api.errors import ApiError
from ingest_api.forms import multipart_body, read_form, read_upload
from ingest_api.services import ServicesDep
from ingest_api.uploads import accept_upload
from sink.webhooks import callback_url_problem

router = APIRouter()


@router.post(
    "/api/analyze",
    status_code=202,
    openapi_extra=multipart_body("image"),
    dependencies=[UPLOAD_SLOT],
)
async def analyze(
    request: Request, services: ServicesDep, reanalyze: Annotated[bool, Query()] = False
) -> JSONResponse:
    """Store the image and queue it for every analyzer; 202 with its id.

    Bytes already seen answer with the earlier image's id (``"duplicate": true``) unless
    ``?reanalyze=true``. An optional ``callback_url`` field gets the result POSTed on completion."""
    form = await read_form(request, max_files=4)
    try:
        upload = form.get("image")
        if upload is None:
            raise ApiError(400, "no file sent: put the image in the multipart field 'image'")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "the field 'image' must be a file, not text")
        callback_url = form.get("callback_url")
        if callback_url is not None:
            if not isinstance(callback_url, str):
                raise ApiError(400, "the field 'callback_url' must be text, not a file")
            problem = callback_url_problem(callback_url.strip())
            if problem:
                raise ApiError(400, problem)
        data = await read_upload(upload, services.settings.max_file_size)
        accepted = await accept_upload(
            services,
            data,
            upload.filename,
            reanalyze=reanalyze,
            callback_url=callback_url.strip() if callback_url else None,
        )
    finally:
        await form.close()
    return JSONResponse(accepted.body(), status_code=202)
