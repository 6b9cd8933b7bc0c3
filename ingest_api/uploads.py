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
from sink.models import Image
from sink.store import uploaded_event
from stream_workers.decode import DecodeError, ImageInfo, probe_image

log = logging.getLogger(__name__)

ALLOWED_EXTENSIONS = {"png", "jpg", "jpeg", "gif", "bmp", "webp"}
EXTENSION_OF_FORMAT = {"png": "png", "jpeg": "jpg", "gif": "gif", "bmp": "bmp", "webp": "webp"}
RETRY_AFTER_S = "5"
# JPEGs and PNGs are checked by their structure, not decoded (stream_workers.decode.probe_image):
# up to this size that costs less on the event loop than the hop to a worker thread would.
INLINE_INSPECT_BYTES = 512 * 1024
_CHECKED_WITHOUT_DECODING = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


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


def _delete_row(services: Services, image_id: int) -> None:
    with services.sessions.begin() as session:
        image = session.get(Image, image_id)
        if image is not None:
            session.delete(image)


def _reuse(services: Services, image: Image) -> Accepted:
    return Accepted(
        image.id, public_url(services.settings, image.id, image.storage_key), image.status, duplicate=True
    )


def _inspect(data: bytes, filename: str | None, max_bytes: int, max_pixels: int) -> tuple[ImageInfo, str]:
    """What the bytes are (or a 400) and their sha256: the CPU work of an upload, in one step."""
    return validate_image(data, filename, max_bytes, max_pixels), hashlib.sha256(data).hexdigest()


async def accept_upload(
    services: Services,
    data: bytes,
    filename: str | None,
    *,
    reanalyze: bool = False,
    store: Callable[[str, bytes, str], None] | None = None,
    callback_url: str | None = None,
) -> Accepted:
    """Validate, record, store and emit one image; returns once the event is delivered.

    Already-seen bytes return the earlier image (``duplicate``) and re-run nothing, unless
    ``reanalyze`` is set. ``store(key, data, content_type)`` puts the original in Peek's storage;
    by default it uploads ``data``, bucket ingestion passes a server-side copy instead.

    The row comes first: it is where a duplicate is found (so seen bytes are never stored again)
    and it is written in a group with the uploads arriving at the same moment. A failure at the
    storage or the broker after it removes the row (and the object) again.
    """
    store = store or services.storage.put
    settings = services.settings
    filename = sanitise_filename(check_filename(filename))
    limits = (settings.max_file_size, settings.max_image_pixels)
    if len(data) <= INLINE_INSPECT_BYTES and data.startswith(_CHECKED_WITHOUT_DECODING):
        info, sha256 = _inspect(data, filename, *limits)  # a fraction of a millisecond: no thread hop
    else:
        info, sha256 = await run_in_threadpool(_inspect, data, filename, *limits)
    key = _storage_key(info)
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
        recorded = await services.recorder.record(row, dedup=not reanalyze)
    except Exception:
        log.exception("database write failed")
        raise ApiError(
            503, "the database is unavailable; try again shortly", {"Retry-After": RETRY_AFTER_S}
        ) from None
    if recorded is not row:
        return _reuse(services, recorded)
    image_id = row.id
    try:
        await run_in_threadpool(store, key, data, info.content_type)
    except StorageError as exc:
        log.error("storage write failed: %s", exc)
        await _undo(services, image_id, None)
        raise ApiError(
            503, "image storage is unavailable; try again shortly", {"Retry-After": RETRY_AFTER_S}
        ) from None
    event = uploaded_event(row)
    try:
        headers = ce_headers(IMAGE_UPLOADED, SOURCE_API, str(image_id), time=event.uploaded_at)
        partition, offset = await services.producer.send(
            IMAGE_UPLOADED, str(image_id), event.to_bytes(), headers
        )
    except DeliveryError as exc:
        log.error("could not emit image.uploaded for %s: %s", image_id, exc)
        await _undo(services, image_id, key)
        raise ApiError(
            503,
            "the event broker is unavailable; try again shortly",
            {"Retry-After": RETRY_AFTER_S},
        ) from None
    services.recorder.note_event(image_id, partition, offset)
    return Accepted(image_id, public_url(settings, image_id, key))


async def _undo(services: Services, image_id: int, key: str | None) -> None:
    """Take back an upload that could not finish: its row, and its object when stored."""
    try:
        await run_in_threadpool(_delete_row, services, image_id)
        if key is not None:
            await run_in_threadpool(services.storage.delete, key)
    except Exception:
        # The reconciler finds a row left behind; say so rather than hide the first failure.
        log.exception("could not take back upload %s", image_id)
