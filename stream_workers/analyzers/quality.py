"""Sharpness (Laplacian variance), blur level, RMS contrast and an overall quality score."""

from __future__ import annotations

import math

import cv2
import numpy as np

from stream_workers.analyzers._image import gray, shrink

FIELDS = ("sharpness_score", "blur_level", "contrast_score", "quality_score")
VERSION = "2"
LUMA_ONLY = True  # looks at brightness only: a worker decodes just the luma

# Measured at a fixed working size so a 24 MP photo and its 1 MP copy score alike.
_WORKING_SIDE = 1024
DECODE_SIDE = _WORKING_SIDE
_SHARP_VARIANCE = 500.0  # at or above: "low" blur
_BLURRY_VARIANCE = 100.0  # below: "high" blur
_GOOD_CONTRAST = 64.0  # RMS contrast (grey-level standard deviation) that earns full marks


def analyze(image: np.ndarray) -> dict:
    """Return sharpness, blur level, contrast and a 0-100 quality score."""
    luma = gray(shrink(image, _WORKING_SIDE)[0])
    sharpness = float(cv2.Laplacian(luma, cv2.CV_32F).var())
    contrast = float(luma.std())
    brightness = float(luma.mean())
    if sharpness >= _SHARP_VARIANCE:
        blur_level = "low"
    elif sharpness >= _BLURRY_VARIANCE:
        blur_level = "medium"
    else:
        blur_level = "high"
    sharp_part = min(1.0, math.log1p(sharpness) / math.log1p(_SHARP_VARIANCE * 2))
    contrast_part = min(1.0, contrast / _GOOD_CONTRAST)
    exposure_part = 1.0 - abs(brightness - 128.0) / 128.0
    quality = 100.0 * (0.5 * sharp_part + 0.3 * contrast_part + 0.2 * exposure_part)
    return {
        "sharpness_score": round(sharpness, 2),
        "blur_level": blur_level,
        "contrast_score": round(contrast, 2),
        "quality_score": round(float(np.clip(quality, 0.0, 100.0)), 1),
    }
