"""Draw detected faces and text regions onto a copy of an image, and encode it as JPEG."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["annotate", "encode_jpeg"]

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
