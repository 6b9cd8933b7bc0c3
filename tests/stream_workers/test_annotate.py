"""annotate draws boxes on a copy; encode_jpeg round-trips."""

from __future__ import annotations

import cv2
import numpy as np

from stream_workers.annotate import annotate, encode_jpeg


def test_boxes_are_drawn_on_a_copy() -> None:
    image = np.zeros((100, 120, 3), np.uint8)
    face = {"x": 10, "y": 10, "width": 30, "height": 30}
    words = {"x": 60, "y": 70, "width": 40, "height": 12}
    annotated = annotate(image, [face], [words])
    assert not image.any()
    assert annotated[10, 20].any() and annotated[70, 80].any()
    assert not annotated[25, 25].any()  # boxes are outlines


def test_encode_jpeg_round_trips() -> None:
    image = np.full((30, 40, 3), (20, 120, 220), np.uint8)
    data = encode_jpeg(image, quality=95)
    assert data[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image).max() <= 4
