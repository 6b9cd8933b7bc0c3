"""Reading multipart uploads with bounded parts and plain-words errors."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException

from ingest_api.errors import ApiError
from ingest_api.limits import BodyTimeout
from ingest_api.screening import check_declared_type

MAX_FIELDS = 32


def multipart_body(field: str, *, many: bool = False) -> dict[str, Any]:
    """OpenAPI request body for routes that parse their multipart form themselves."""
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": file_schema} if many else file_schema
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {field: schema, "callback_url": {"type": "string"}},
                        "required": [field],
                    }
                }
            },
        }
    }


async def read_form(request: Request, max_files: int, field: str = "image") -> FormData:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, f"send the image as multipart/form-data in the field '{field}'")
    try:
        return await request.form(max_files=max_files, max_fields=MAX_FIELDS)
    except BodyTimeout:
        raise ApiError(
            408, "the request body arrived too slowly; send it again on a faster connection"
        ) from None
    except MultiPartException as exc:
        raise ApiError(400, f"malformed multipart body: {exc.message}") from None
    except Exception:
        raise ApiError(400, "malformed multipart body") from None


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The part's bytes, refusing (413) as soon as it passes the size limit."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(1024 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"the file is larger than the {max_bytes // (1024 * 1024)} MB limit")
        chunks.append(chunk)
    data = b"".join(chunks)
    check_declared_type(upload.content_type, data)
    return data
