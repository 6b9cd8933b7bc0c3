"""Scene type (indoor / outdoor / nature) from colour, sky and edge statistics."""

from __future__ import annotations

import cv2
import numpy as np

from stream_workers.analyzers._image import shrink

FIELDS = ("scene_type", "scene_confidence")
VERSION = "2"

_WORKING_SIDE = 256


def analyze(image: np.ndarray) -> dict:
    """Return the most likely scene label and its probability."""
    small, _ = shrink(image, _WORKING_SIDE)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    hue, saturation, value = (hsv[:, :, channel].astype(np.float32) for channel in range(3))
    coloured = saturation > 40
    green = float((coloured & (hue >= 35) & (hue <= 85)).mean())
    top = slice(0, max(1, small.shape[0] // 3))
    sky = float(((hue[top] >= 90) & (hue[top] <= 130) & (value[top] > 100)).mean())
    scores = np.array([1.0, 3.0 * sky, 3.0 * green])
    probabilities = np.exp(scores) / np.exp(scores).sum()
    best = int(np.argmax(probabilities))
    return {
        "scene_type": ("indoor", "outdoor", "nature")[best],
        "scene_confidence": round(float(probabilities[best]), 3),
    }
