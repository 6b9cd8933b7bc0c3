"""Accepting an upload: validate the bytes, store them, record the row, emit the event.

Either all of it happens or none of it: a failure after a step undoes the steps before it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool

from infra.kafka import DeliveryError
from infra.storage import StorageError
from infra.urls import public_url
from ingest_api.errors import ApiError
from ingest_api.services import Services
from schemas.topics import IMAGE_UPLOADED
from sink.models import Image
from sink.store import uploaded_event
from stream_workers.decode import DecodeError, ImageInfo, probe_image

log = logging.getLogger(__name__)

ALLOWED_EXTENSIONS = {"png", "jpg", "jpeg", "gif", "bmp", "webp"}
EXTENSION_OF_FORMAT = {"png": "png", "jpeg": "jpg", "gif": "gif", "bmp": "bmp", "webp": "webp"}
RETRY_AFTER_S = "5"


@dataclass(frozen=True)
class Accepted:
    image_id: int
    public_url: str


def sanitise_filename(name: str | None) -> str | None:
    """The client's file name, kept only as metadata: base name, printable, at most 255 chars."""
    if not name:
        return None
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(ch for ch in name if ch.isprintable() and ch not in "\x00")
    name = re.sub(r"\s+", " ", name).strip(" .")
    return name[:255] or None


def validate_image(data: bytes, filename: str | None, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Refuse what Peek cannot analyse, with a reason a user can act on."""
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    if len(data) > max_bytes:
        raise ApiError(413, f"the file is larger than the {max_bytes // (1024 * 1024)} MB limit")
    if filename and "." in filename:
        extension = filename.rsplit(".", 1)[-1].lower()
        if extension not in ALLOWED_EXTENSIONS:
            allowed = ", ".join(sorted(ALLOWED_EXTENSIONS))
            raise ApiError(400, f"file type .{extension} is not allowed; send one of: {allowed}")
    try:
        return probe_image(data, max_pixels=max_pixels)
    except DecodeError as exc:
        raise ApiError(400, f"not a usable image: {exc}") from None


def _storage_key(info: ImageInfo) -> str:
    today = datetime.now(UTC)
    return f"originals/{today:%Y/%m/%d}/{uuid.uuid4().hex}.{EXTENSION_OF_FORMAT[info.format]}"


def _insert_row(services: Services, row: Image) -> int:
    with services.sessions.begin() as session:
        session.add(row)
        session.flush()
        return row.id


def _delete_row(services: Services, image_id: int) -> None:
    with services.sessions.begin() as session:
        image = session.get(Image, image_id)
        if image is not None:
            session.delete(image)


async def accept_upload(services: Services, data: bytes, filename: str | None) -> Accepted:
    """Validate, store, record and emit one image; returns once the event is delivered."""
    settings = services.settings
    filename = sanitise_filename(filename)
    info = await run_in_threadpool(
        validate_image, data, filename, settings.max_file_size, settings.max_image_pixels
    )
    key = _storage_key(info)
    try:
        await run_in_threadpool(services.storage.put, key, data, info.content_type)
    except StorageError as exc:
        log.error("storage write failed: %s", exc)
        raise ApiError(
            503, "image storage is unavailable; try again shortly", {"Retry-After": RETRY_AFTER_S}
        ) from None
    row = Image(
        storage_key=key,
        original_filename=filename,
        content_type=info.content_type,
        size_bytes=len(data),
        width=info.width,
        height=info.height,
        sha256=hashlib.sha256(data).hexdigest(),
        expected_analyzers=settings.analyzer_names,
    )
    try:
        image_id = await run_in_threadpool(_insert_row, services, row)
    except Exception:
        log.exception("database write failed")
        await run_in_threadpool(services.storage.delete, key)
        raise ApiError(
            503, "the database is unavailable; try again shortly", {"Retry-After": RETRY_AFTER_S}
        ) from None
    event = uploaded_event(row)
    try:
        await services.producer.send(IMAGE_UPLOADED, str(image_id), event.to_bytes())
    except DeliveryError as exc:
        log.error("could not emit image.uploaded for %s: %s", image_id, exc)
        await run_in_threadpool(_delete_row, services, image_id)
        await run_in_threadpool(services.storage.delete, key)
        raise ApiError(
            503,
            "the event broker is unavailable; try again shortly",
            {"Retry-After": RETRY_AFTER_S},
        ) from None
    return Accepted(image_id, public_url(settings, image_id, key))
