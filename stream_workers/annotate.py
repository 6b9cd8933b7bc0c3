"""Draw detected faces and text regions onto a copy of an image, and encode it as JPEG."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from stream_workers.decode import decode_image

__all__ = ["BOX_FIELDS", "annotate", "encode_jpeg", "render_annotated", "scale_boxes"]

# The insight fields that hold boxes ({"x", "y", "width", "height"}), in original-image pixels.
BOX_FIELDS = ("face_locations", "text_regions")

_FACE_COLOUR = (0, 200, 0)  # BGR green
_TEXT_COLOUR = (0, 140, 255)  # BGR orange


def annotate(image: np.ndarray, faces: list[dict], text_regions: list[dict]) -> np.ndarray:
    """Return a copy of `image` with every face boxed, and every text region boxed too."""
    annotated = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for region in text_regions:
        _box(annotated, region, _TEXT_COLOUR, max(1, thickness // 2))
    for face in faces:
        _box(annotated, face, _FACE_COLOUR, thickness)
    return annotated


def _box(image: np.ndarray, box: dict, colour: tuple[int, int, int], thickness: int) -> None:
    """Draw one {"x","y","width","height"} rectangle in place."""
    x, y = int(box["x"]), int(box["y"])
    corner = (x + int(box["width"]) - 1, y + int(box["height"]) - 1)
    cv2.rectangle(image, (x, y), corner, colour, thickness)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode a BGR (or grey) uint8 image as baseline JPEG bytes."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("the image could not be encoded as JPEG")
    return encoded.tobytes()


def scale_boxes(result: dict[str, Any], scale_x: float, scale_y: float) -> dict[str, Any]:
    """Scale the boxes of ``result``'s box fields by these factors (in place; returns ``result``)."""
    if abs(scale_x - 1) < 1e-6 and abs(scale_y - 1) < 1e-6:
        return result
    for field in BOX_FIELDS:
        if isinstance(result.get(field), list):
            result[field] = [
                {
                    **box,
                    "x": round(box["x"] * scale_x),
                    "y": round(box["y"] * scale_y),
                    "width": round(box["width"] * scale_x),
                    "height": round(box["height"] * scale_y),
                }
                for box in result[field]
            ]
    return result


def render_annotated(
    data: bytes, width: int, height: int, faces: list[dict], text_regions: list[dict]
) -> bytes:
    """The image ``data`` with its boxes drawn, as JPEG; the boxes are in the coordinates of the
    image as shown, ``width`` × ``height`` (a large photo is drawn on its reduced decode)."""
    picture = decode_image(data)
    scaled = scale_boxes(
        {"face_locations": faces, "text_regions": text_regions},
        picture.shape[1] / width,
        picture.shape[0] / height,
    )
    return encode_jpeg(annotate(picture, scaled["face_locations"], scaled["text_regions"]))
