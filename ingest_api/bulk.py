"""Accepting many uploads at once: every part on its own, a refused part never holds back the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from starlette.datastructures import UploadFile

from ingest_api.errors import ApiError
from ingest_api.forms import read_upload
from ingest_api.services import Services
from ingest_api.uploads import accept_upload, sanitise_filename

log = logging.getLogger(__name__)

Item = TypeVar("Item")


async def bounded_map(
    items: Sequence[Item], work: Callable[[Item], Awaitable[dict[str, Any]]], concurrency: int
) -> list[dict[str, Any]]:
    """``work`` on every item with at most ``concurrency`` at once; results in the items' order."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def gated(item: Item) -> dict[str, Any]:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(gated(item) for item in items)))


def refusal(exc: Exception, **context: Any) -> dict[str, Any]:
    """One refused item's entry: the reason and the status code it would have had on its own."""
    if isinstance(exc, ApiError):
        return {"error": exc.message, "status_code": exc.status_code, **context}
    log.error("could not accept %s: %r", context, exc, exc_info=exc)
    return {"error": "internal error; this file was not accepted", "status_code": 500, **context}


async def accept_parts(
    services: Services, parts: Sequence[UploadFile | str], *, reanalyze: bool
) -> list[dict[str, Any]]:
    """One entry per part, in order: ``{"id", "status", ...}`` or ``{"error", "filename", ...}``."""
    max_bytes = services.settings.max_file_size

    async def accept_part(part: UploadFile | str) -> dict[str, Any]:
        if not isinstance(part, UploadFile):
            return {
                "error": "the field 'images' must hold files, not text",
                "status_code": 400,
                "filename": None,
            }
        filename = sanitise_filename(part.filename)
        try:
            data = await read_upload(part, max_bytes)
            accepted = await accept_upload(services, data, part.filename, reanalyze=reanalyze)
        except Exception as exc:
            return refusal(exc, filename=filename)
        return {**accepted.body(), "filename": filename}

    return await bounded_map(parts, accept_part, services.settings.ingest_concurrency)
