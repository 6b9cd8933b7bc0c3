"""Turn uploaded bytes into one BGR image, safely and at a bounded size.

Exports `decode_image` (bytes -> BGR uint8 array), `shrink` (area downscale), `probe_image`
(cheap header check for the upload API), `ImageInfo` and `DecodeError`.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_SIDE", "DecodeError", "ImageInfo", "decode_image", "probe_image", "shrink"]

_FORMATS = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpeg", "image/jpeg"),
    "GIF": ("gif", "image/gif"),
    "BMP": ("bmp", "image/bmp"),
    "WEBP": ("webp", "image/webp"),
}
_WHITE = (255, 255, 255)
# JPEG markers: start of scan, quantisation tables, and the frame headers (SOF0-15 but DHT, JPG, DAC).
_SOS, _DQT = 0xDA, 0xDB
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SIDE = 4096  # the largest side decode_image returns unless asked for less
_DRAFT_FLOOR = 2048  # the text analyzer's working size; the others look at less
_EXIF_ORIENTATION = 0x0112
_IMREAD_REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_IMREAD_REDUCED_GRAY = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


class DecodeError(ValueError):
    """The bytes are not a usable image; the message says why in words."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an accepted image; width and height as shown (EXIF orientation
    applied), the same as the decoded pixels."""

    format: str
    content_type: str
    width: int
    height: int


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (without decoding pixels) and refuse unknown formats and oversized images."""
    if not data:
        raise DecodeError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(_FORMATS))
    except UnidentifiedImageError:
        raise DecodeError(_unsupported_reason(data)) from None
    except Image.DecompressionBombError:
        raise DecodeError("the image has too many pixels to analyse") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DecodeError(f"the image header is corrupt ({error})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise DecodeError("the image has no pixels")
    if width * height > max_pixels:
        raise DecodeError(
            f"the image is {width}×{height} = {width * height:,} pixels, more than the {max_pixels:,} allowed"
        )
    return image


def _unsupported_reason(data: bytes) -> str:
    """Say whether the bytes are an image of an unsupported kind or no image at all."""
    try:
        other = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any failure here just means "not an image"
        return "the file is not a PNG, JPEG, GIF, BMP or WEBP image"
    return f"{other.format} images are not supported (use PNG, JPEG, GIF, BMP or WEBP)"


def probe_image(data: bytes, *, max_pixels: int = 60_000_000) -> ImageInfo:
    """Check the format, size and integrity of an upload without decoding its pixels where the
    format's structure tells as much (JPEG markers, PNG chunk checksums)."""
    image = _open(data, max_pixels)
    short_format, content_type = _FORMATS[image.format or ""]
    width, height = image.size
    if _turned_by_exif(image, data):
        width, height = height, width  # the size as decoded and shown, so boxes scale back right
    try:
        if image.format == "JPEG":
            _check_jpeg_scan(data)
        elif image.format == "PNG":
            image.verify()  # walks every chunk and checks its CRC, without inflating pixels
        else:
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DecodeError(f"the image data is truncated or corrupt ({error})") from None
    return ImageInfo(format=short_format, content_type=content_type, width=width, height=height)


def _turned_by_exif(image: Image.Image, data: bytes) -> bool:
    """Whether the EXIF orientation turns the image a quarter (tags 5-8: width and height swap)."""
    try:
        if image.format == "PNG":
            # Pillow sees an eXIf chunk after the pixel data only once it has inflated them (and
            # verify must come first): the chunks are walked here instead, without inflating.
            exif = Image.Exif()
            exif.load(_png_exif(data))
        else:
            exif = image.getexif()
        return exif.get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - unreadable EXIF: decoders ignore it too
        return False


def _png_exif(data: bytes) -> bytes:
    """The payload of a PNG's eXIf chunk, before or after the pixel data; empty when it has none."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        if kind == b"eXIf":
            return data[offset + 8 : offset + 8 + length]
        if kind == b"IEND":
            break
        offset += 12 + length  # length, type, data, CRC
    return b""


def _check_jpeg_scan(data: bytes) -> None:
    """A JPEG must hold well-formed headers, quantisation tables, a frame, and its whole scan.

    Pillow's header reader skips junk between markers and leaves tables to the decoder, so the
    markers are walked here strictly, up to the first scan. Inside entropy-coded data every 0xFF
    byte is stuffed (FF 00) or a restart marker, so an FF D9 after the scan starts is the real end
    of the image: a file cut after its headers has none. Decoding the pixels (2 ms for a 200 KB
    photo, 14 ms for 12 MP even at 1/8 scale) would tell little more: libjpeg accepts damaged scan
    data with a warning, and an analyzer that cannot decode its image reports an error.
    """
    position, markers = 2, set()
    while True:
        if position + 4 > len(data):
            raise EOFError("the JPEG ends inside its headers")
        if data[position] != 0xFF:
            raise SyntaxError(f"the JPEG has no marker where one belongs (byte {position})")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            raise SyntaxError(f"the JPEG has a segment of impossible length (byte {position})")
        markers.add(marker)
        position += 2 + length
        if marker == _SOS:
            break
    if _DQT not in markers or not markers & _FRAME_MARKERS:
        raise SyntaxError("the JPEG lacks its quantisation tables or its frame header")
    if data.rfind(b"\xff\xd9", position) < 0:
        raise EOFError("the JPEG scan has no end: the file is cut short")


def decode_image(
    data: bytes, *, max_side: int = MAX_SIDE, max_pixels: int = 60_000_000, gray: bool = False
) -> np.ndarray:
    """Decode bytes to a BGR uint8 (H, W, 3) array whose longest side is at most `max_side`; with
    `gray`, to its luma (H, W) instead.

    EXIF orientation is applied, animations give their first frame, transparency is laid on
    white, and JPEGs are decoded directly at a reduced scale (DCT scaling: 1/2, 1/4 or 1/8) as
    long as the longest side stays at least `_DRAFT_FLOOR`, the most any analyzer looks at; a
    24 MP photo is never inflated at full size. A JPEG's luma is its Y channel, decoded without
    the colour planes (a 640 px photo in 0.9 ms rather than 1.5), and shrinking one plane is a
    third of the work.
    """
    image = _open(data, max_pixels)
    width, height = image.size
    try:
        if image.format == "JPEG":
            keep = min(1.0, max(_DRAFT_FLOOR, 1) / max(width, height))
            keep = min(keep, max_side / max(width, height)) if max_side < _DRAFT_FLOOR else keep
            if image.mode in ("RGB", "L"):
                return _decode_jpeg(data, _dct_reduction(max(width, height), keep), max_side, gray)
            if keep < 1.0:
                # draft picks the strongest DCT reduction whose result is at least this size
                image.draft(None, (max(1, math.ceil(width * keep)), max(1, math.ceil(height * keep))))
        image.load()
        scale = min(1.0, max_side / max(image.size))
        if scale < 1.0:
            target = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            image = image.resize(target, Image.Resampling.BOX, reducing_gap=2.0)
        ImageOps.exif_transpose(image, in_place=True)  # the default returns a full copy, even upright
        array = np.array(_to_rgb(image))
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DecodeError(f"the image data is truncated or corrupt ({error})") from None
    del image  # the PIL copy goes before anything else is allocated: one full-size copy at a time
    if gray:
        return cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)
    return cv2.cvtColor(array, cv2.COLOR_RGB2BGR, dst=array)  # in place


def _dct_reduction(long_side: int, keep: float) -> int:
    """The strongest DCT reduction (1, 2, 4 or 8) that keeps at least ``keep`` of the long side."""
    wanted = max(1, math.ceil(long_side * keep))
    return next(factor for factor in (8, 4, 2, 1) if math.ceil(long_side / factor) >= wanted)


def _decode_jpeg(data: bytes, reduction: int, max_side: int, gray: bool) -> np.ndarray:
    """An RGB or grey JPEG straight to BGR (or luma) by OpenCV's libjpeg, DCT-reduced, EXIF
    orientation applied: no PIL image, byte string and array copies in between (a 2 MP photo:
    4 ms, not 14)."""
    # libjpeg fills a scan that is cut short with grey instead of failing: check the structure.
    _check_jpeg_scan(data)
    flags = (_IMREAD_REDUCED_GRAY if gray else _IMREAD_REDUCED)[reduction]
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None:
        raise DecodeError("the image data is truncated or corrupt (libjpeg could not decode it)")
    return shrink(array, max_side)[0]


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16-bit scaled, alpha composited on white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image


def shrink(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Area-downscale so the longest side is at most `max_side`; return it and the factor."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    step = min(int(1 / scale), height, width)
    if step >= 2:
        # Exact integer-ratio area averaging takes OpenCV's fast path: reduce by `step` first,
        # then finish on the much smaller image (about twice as fast on a 12 MP photo).
        cropped = image[: height // step * step, : width // step * step]
        image = cv2.resize(cropped, (width // step, height // step), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale
