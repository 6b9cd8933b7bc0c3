"""Small image helpers shared by the analyzers (``shrink`` lives with the decoder, which needs
it too and is imported by the upload API, where the analyzers are not)."""

from __future__ import annotations

import cv2
import numpy as np

from stream_workers.decode import shrink

__all__ = ["gray", "shrink"]


def gray(image: np.ndarray) -> np.ndarray:
    """BGR (or already single-channel) image to 8-bit luma."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
