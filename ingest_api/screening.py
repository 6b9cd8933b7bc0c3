"""Screening uploads for hostile shapes that a plain image check lets through.

File names that hide what they are (control characters, direction overrides, absurd lengths),
a declared content type that contradicts the bytes, and polyglots (an image that is also a page,
a script or an archive) are refused with a reason.
"""

from __future__ import annotations

import re
import unicodedata

from ingest_api.errors import ApiError

MAX_FILENAME_CHARS = 255
# Bidirectional overrides and isolates make "gpj.exe" read as "exe.jpg".
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
# Generic types say nothing about the bytes; anything else must agree with them.
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream", "image/*"}
_TYPE_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-ms-bmp": "image/bmp",
    "image/x-bmp": "image/bmp",
    "image/x-png": "image/png",
}
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
# Markers of active content: a browser, an interpreter or an unzipper would act on these.
# Searched in the lower-cased bytes: the tags as one pattern that starts with "<" (the regex engine
# skips ahead to each "<"), then the URL scheme; a third of the time of one search per marker.
_ACTIVE_TAGS = re.compile(rb"<(?:script|html|!doctype html|\?php|iframe)")
_ACTIVE_SCHEME = b"javascript:"
_TRAILING_FORMATS = (b"PK\x03\x04", b"%PDF-", b"\x7fELF", b"MZ", b"#!")


def check_filename(name: str | None) -> str | None:
    """The name unchanged, or a 400 when it is built to mislead or to break things."""
    if not name:
        return name
    if len(name) > MAX_FILENAME_CHARS:
        raise ApiError(
            400, f"the file name is {len(name):,} characters long; at most {MAX_FILENAME_CHARS} allowed"
        )
    if "\x00" in name or any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ApiError(400, "the file name contains control characters (such as NUL); rename the file")
    if _BIDI_CONTROLS.search(name):
        raise ApiError(400, "the file name contains invisible text-direction characters; rename the file")
    return name


def sniffed_type(data: bytes) -> str | None:
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_declared_type(declared: str | None, data: bytes) -> None:
    """Refuse a part whose Content-Type names something other than what its bytes are."""
    declared_type = (declared or "").split(";", 1)[0].strip().lower()
    declared_type = _TYPE_ALIASES.get(declared_type, declared_type)
    if declared_type in _GENERIC_TYPES:
        return
    actual = sniffed_type(data)
    if actual is not None and declared_type != actual:
        raise ApiError(
            400, f"the file was declared as {declared_type} but its bytes are {actual}; send the right type"
        )


def _end_of_image(data: bytes, image_format: str) -> int | None:
    """Where the image's own bytes end, for formats with an unambiguous end marker."""
    if image_format == "png":
        end = data.rfind(b"IEND")
        return end + 8 if end >= 0 else None
    if image_format == "jpeg":
        end = data.rfind(b"\xff\xd9")
        return end + 2 if end >= 0 else None
    return None


def check_not_polyglot(data: bytes, image_format: str) -> None:
    """Refuse an image that is also markup, a script or an archive."""
    # Files up to 1 MB are searched whole; larger ones at both ends, where polyglot payloads sit.
    searched = data.lower() if len(data) <= 1 << 20 else (data[:4096] + data[-65536:]).lower()
    if _ACTIVE_TAGS.search(searched) or _ACTIVE_SCHEME in searched:
        raise ApiError(
            400, "the file is an image and also something else (it carries web page or script content)"
        )
    end = _end_of_image(data, image_format)
    if end is not None and end < len(data):
        trailing = data[end:]
        if trailing.lstrip(b"\x00\r\n\t ").startswith(_TRAILING_FORMATS):
            raise ApiError(
                400, f"the file carries {len(trailing):,} bytes of another file format after the image"
            )
