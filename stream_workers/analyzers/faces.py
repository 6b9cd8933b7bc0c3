"""Frontal faces with OpenCV's Haar cascade on a downscaled, equalised grey image."""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np

from stream_workers.analyzers._image import gray, shrink

FIELDS = ("faces_detected", "face_locations")
VERSION = "2"

_WORKING_SIDE = 800
_MIN_FACE = 24  # pixels at working size
_local = threading.local()  # CascadeClassifier is not safe to share between threads


def _cascade() -> cv2.CascadeClassifier:
    """This thread's frontal-face cascade, loaded once."""
    if not hasattr(_local, "cascade"):
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"cannot load the face cascade from {path}")
        _local.cascade = cascade
    return _local.cascade


def analyze(image: np.ndarray) -> dict:
    """Return the number of faces and their boxes in the input image's pixel coordinates."""
    small, scale = shrink(image, _WORKING_SIDE)
    luma = cv2.equalizeHist(gray(small))
    boxes = _cascade().detectMultiScale(
        luma, scaleFactor=1.1, minNeighbors=5, minSize=(_MIN_FACE, _MIN_FACE)
    )
    locations = [
        {
            "x": round(int(x) / scale),
            "y": round(int(y) / scale),
            "width": round(int(w) / scale),
            "height": round(int(h) / scale),
        }
        for x, y, w, h in boxes
    ]
    return {"faces_detected": len(locations), "face_locations": locations}
