"""Dominant colours (K-means on a pixel sample), their shares, and brightness (luma mean)."""

from __future__ import annotations

import cv2
import numpy as np

from stream_workers.analyzers._image import gray, shrink

FIELDS = ("dominant_colors", "color_shares", "brightness")
VERSION = "2"

_CLUSTERS = 5
DECODE_SIDE = 512  # brightness is measured at this size, colours on a smaller thumbnail
_SAMPLE_SIDE = 128  # ~12k pixels: K-means on an area-averaged thumbnail matches full-image K-means
_ATTEMPTS = 3


def analyze(image: np.ndarray) -> dict:
    """Return up to five dominant colours (most dominant first), their shares, brightness."""
    thumbnail, _ = shrink(image, _SAMPLE_SIDE)
    pixels = thumbnail.reshape(-1, 3).astype(np.float32)
    distinct = _distinct_colors(thumbnail)
    clusters = min(_CLUSTERS, len(distinct))
    if clusters == len(distinct):
        centers: np.ndarray = distinct.astype(np.float32)
        labels = np.argmin(((pixels[:, None, :] - centers[None]) ** 2).sum(axis=2), axis=1)
    else:
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 0.5)
        cv2.setRNGSeed(0)
        initial_labels = np.zeros((len(pixels), 1), np.int32)
        _, labels, centers = cv2.kmeans(
            pixels, clusters, initial_labels, criteria, _ATTEMPTS, cv2.KMEANS_PP_CENTERS
        )
        labels = labels.ravel()
    counts = np.bincount(labels, minlength=len(centers)).astype(np.float64)
    order = [index for index in np.argsort(-counts, kind="stable") if counts[index] > 0]
    shares = counts[order] / counts.sum()
    return {
        "dominant_colors": [_hex(centers[index]) for index in order],
        "color_shares": [round(float(share), 4) for share in shares],
        "brightness": round(float(gray(shrink(image, DECODE_SIDE)[0]).mean()), 2),
    }


def _distinct_colors(image: np.ndarray) -> np.ndarray:
    """The distinct BGR colours of an image, as rows, sorted (``np.unique(axis=0)`` without its
    row-wise sort, which costs more than the clustering on a thumbnail)."""
    flat = image.reshape(-1, 3).astype(np.uint32)
    packed = np.unique(flat[:, 0] << 16 | flat[:, 1] << 8 | flat[:, 2])
    return np.stack([packed >> 16, packed >> 8 & 0xFF, packed & 0xFF], axis=1).astype(np.uint8)


def _hex(bgr: np.ndarray) -> str:
    """A BGR centroid as '#rrggbb'."""
    blue, green, red = (int(np.clip(round(float(value)), 0, 255)) for value in bgr)
    return f"#{red:02x}{green:02x}{blue:02x}"
