"""Accepting an upload: validate the bytes, store them, record the row, emit the event.

Either all of it happens or none of it: a failure after a step undoes the steps before it.
Bytes Peek has already seen (same sha256) are not stored or analysed again: the upload answers
with the existing image's id, unless the caller asks to ``reanalyze`` (a new image, a fresh run).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from infra.cloudevents import SOURCE_API, ce_headers
from infra.kafka import DeliveryError
from infra.storage import StorageError
from infra.urls import public_url
from ingest_api.auth import current_owner_id
from ingest_api.errors import ApiError
from ingest_api.screening import check_filename, check_not_polyglot
from ingest_api.services import Services
from schemas.topics import IMAGE_UPLOADED
from sink.models import FAILED, Image
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
    status: str = "processing"
    duplicate: bool = False

    def body(self) -> dict[str, object]:
        """The JSON answer for this upload: ``duplicate`` only when an earlier image was reused."""
        body: dict[str, object] = {"id": self.image_id, "status": self.status, "public_url": self.public_url}
        if self.duplicate:
            body["duplicate"] = True
        return body


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
        info = probe_image(data, max_pixels=max_pixels)
    except DecodeError as exc:
        raise ApiError(400, f"not a usable image: {exc}") from None
    check_not_polyglot(data, info.format)
    return info


def _storage_key(info: ImageInfo) -> str:
    today = datetime.now(UTC)
    return f"originals/{today:%Y/%m/%d}/{uuid.uuid4().hex}.{EXTENSION_OF_FORMAT[info.format]}"


def _seen(session: Session, sha256: str) -> Image | None:
    """The newest image with these bytes whose analysis did not fail (a failed one is retried)."""
    # Only the same key's images count: another client's upload must not hand out its id.
    owner = current_owner_id()
    same_owner = Image.owner_key_id.is_(None) if owner is None else Image.owner_key_id == owner
    return session.scalars(
        select(Image)
        .where(Image.sha256 == sha256, Image.status != FAILED, same_owner)
        .order_by(Image.id.desc())
        .limit(1)
    ).first()


def find_duplicate(services: Services, sha256: str) -> Image | None:
    with services.sessions() as session:
        return _seen(session, sha256)


def _insert_row(services: Services, row: Image, dedup: bool) -> Image:
    """Insert the row and return it; with ``dedup``, return an earlier image with the same bytes
    instead when one appeared since the first look (two uploads of one file racing)."""
    with services.sessions.begin() as session:
        if dedup:
            if session.get_bind().dialect.name == "postgresql":
                # Serialise uploads of the same bytes, so the check and the insert are one step.
                session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:sha))"), {"sha": row.sha256})
            earlier = _seen(session, row.sha256)
            if earlier is not None:
                return earlier
        session.add(row)
        session.flush()
        return row


def _delete_row(services: Services, image_id: int) -> None:
    with services.sessions.begin() as session:
        image = session.get(Image, image_id)
        if image is not None:
            session.delete(image)


def _reuse(services: Services, image: Image) -> Accepted:
    return Accepted(
        image.id, public_url(services.settings, image.id, image.storage_key), image.status, duplicate=True
    )


async def accept_upload(
    services: Services,
    data: bytes,
    filename: str | None,
    *,
    reanalyze: bool = False,
    store: Callable[[str, bytes, str], None] | None = None,
    callback_url: str | None = None,
) -> Accepted:
    """Validate, store, record and emit one image; returns once the event is delivered.

    Already-seen bytes return the earlier image (``duplicate``) and re-run nothing, unless
    ``reanalyze`` is set. ``store(key, data, content_type)`` puts the original in Peek's storage;
    by default it uploads ``data``, bucket ingestion passes a server-side copy instead.
    """
    store = store or services.storage.put
    settings = services.settings
    filename = sanitise_filename(check_filename(filename))
    info = await run_in_threadpool(
        validate_image, data, filename, settings.max_file_size, settings.max_image_pixels
    )
    sha256 = hashlib.sha256(data).hexdigest()
    if not reanalyze:
        try:
            earlier = await run_in_threadpool(find_duplicate, services, sha256)
        except Exception:
            log.exception("database read failed")
            raise ApiError(
                503, "the database is unavailable; try again shortly", {"Retry-After": RETRY_AFTER_S}
            ) from None
        if earlier is not None:
            return _reuse(services, earlier)
    key = _storage_key(info)
    try:
        await run_in_threadpool(store, key, data, info.content_type)
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
        sha256=sha256,
        expected_analyzers=settings.analyzer_names,
        owner_key_id=current_owner_id(),
        callback_url=callback_url,
    )
    try:
        stored = await run_in_threadpool(_insert_row, services, row, not reanalyze)
    except Exception:
        log.exception("database write failed")
        await run_in_threadpool(services.storage.delete, key)
        raise ApiError(
            503, "the database is unavailable; try again shortly", {"Retry-After": RETRY_AFTER_S}
        ) from None
    if stored is not row:
        await run_in_threadpool(services.storage.delete, key)
        return _reuse(services, stored)
    image_id = row.id
    event = uploaded_event(row)
    try:
        headers = ce_headers(IMAGE_UPLOADED, SOURCE_API, str(image_id), time=event.uploaded_at)
        await services.producer.send(IMAGE_UPLOADED, str(image_id), event.to_bytes(), headers)
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
