"""Page layout for OCR: is this a page of text lines, at what skew and quarter turn, and upright it.

A page of text has a row profile of stroke edges that alternates between full rows (text lines)
and empty rows (the gaps between them), but only when the lines run along the rows. So the angle
(and the quarter turn) that makes the profile most peaked is the one that sets the lines
horizontal, and a profile with several regular bands says "page". Upside-down (180°) cannot be
told this way; the caller decides that by reading both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stream_workers.analyzers._image import shrink

__all__ = ["PageLayout", "find_page", "upright", "map_box_back"]

_WORK_SIDE = 768
_COARSE_ANGLES = np.arange(-20.0, 20.1, 2.0)
_FINE_STEP = 0.25
_MIN_EDGE_PIXELS = 300
_MIN_BANDS = 2  # two lines of text already give a strongly one-way profile
_DIRECTION_RATIO = 2.0
_MAX_SAMPLE = 40_000  # edge pixels used for the profiles; more adds time, not precision


@dataclass(frozen=True)
class PageLayout:
    """How to set a page's lines horizontal, and how tall its lines are (in input pixels)."""

    angle: float  # degrees counter-clockwise, applied after the quarter turn
    quarter: int  # 0: lines run along rows; 1: along columns (turn 90° counter-clockwise)
    line_height: float
    lines: int


def _edges(luma: np.ndarray) -> np.ndarray:
    """Stroke edges (morphological gradient, Otsu): polarity-free, so light text counts too."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    gradient = cv2.morphologyEx(luma, cv2.MORPH_GRADIENT, kernel)
    _, edges = cv2.threshold(gradient, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return edges


def _profile(xs: np.ndarray, ys: np.ndarray, angle: float) -> np.ndarray:
    """Row histogram of points after rotating the image `angle` degrees counter-clockwise."""
    radians = np.deg2rad(angle)
    rows = ys * np.cos(radians) - xs * np.sin(radians)
    rows = np.round(rows - rows.min()).astype(np.int64)
    return np.bincount(rows)


def _peakedness(profile: np.ndarray) -> float:
    """Sum of squared row counts over the squared total: high when ink gathers in few rows."""
    total = float(profile.sum())
    return float((profile.astype(np.float64) ** 2).sum()) / (total * total) if total else 0.0


def _best_angle(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    """Coarse then fine search for the most peaked row profile; return (angle, peakedness)."""
    scores = [_peakedness(_profile(xs, ys, angle)) for angle in _COARSE_ANGLES]
    coarse = float(_COARSE_ANGLES[int(np.argmax(scores))])
    fine = np.arange(coarse - 1.75, coarse + 1.76, _FINE_STEP)
    fine_scores = [_peakedness(_profile(xs, ys, angle)) for angle in fine]
    best = int(np.argmax(fine_scores))
    return float(fine[best]), fine_scores[best]


def _bands(profile: np.ndarray) -> list[tuple[int, int]]:
    """Runs of rows holding a clear share of ink: (start, height)."""
    level = 0.2 * float(np.percentile(profile, 95))
    full = np.concatenate(([False], profile > level, [False]))
    changes = np.flatnonzero(full[1:] != full[:-1])
    return [(int(start), int(end - start)) for start, end in zip(changes[::2], changes[1::2], strict=True)]


def find_page(luma: np.ndarray) -> PageLayout | None:
    """The layout of a page of text lines in `luma`, or None when it does not look like one."""
    work, factor = shrink(luma, _WORK_SIDE)
    ys, xs = np.nonzero(_edges(work))
    if len(xs) < _MIN_EDGE_PIXELS:
        return None
    if len(xs) > _MAX_SAMPLE:
        keep = np.random.default_rng(0).choice(len(xs), _MAX_SAMPLE, replace=False)
        xs, ys = xs[keep], ys[keep]
    xs, ys = xs.astype(np.float64), ys.astype(np.float64)
    # A quarter turn counter-clockwise sends (x, y) to (y, width - 1 - x).
    turned = (ys, work.shape[1] - 1 - xs)
    choices = sorted([(*_best_angle(xs, ys), 0), (*_best_angle(*turned), 1)], key=lambda choice: choice[1])
    (_, other, _), (angle, peak, quarter) = choices
    if peak < _DIRECTION_RATIO * other:  # text lines favour one direction strongly; textures don't
        return None
    rows_x, rows_y = (xs, ys) if quarter == 0 else turned
    profile = _profile(rows_x, rows_y, angle)
    bands = [(start, height) for start, height in _bands(profile) if height >= 3]
    if len(bands) < _MIN_BANDS:
        return None
    heights = np.array([height for _, height in bands], np.float64)
    typical = float(np.median(heights))
    regular = float(((heights >= 0.5 * typical) & (heights <= 2.0 * typical)).mean())
    in_bands = sum(int(profile[start : start + height].sum()) for start, height in bands)
    if regular < 0.7 or in_bands < 0.75 * profile.sum() or typical > 0.2 * len(profile):
        return None
    return PageLayout(angle=angle, quarter=quarter, line_height=typical / factor, lines=len(bands))


def upright(
    luma: np.ndarray, layout: PageLayout, half_turn: bool, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Turn, deskew, optionally rotate 180° and scale `luma`; return it and the 2×3 affine used."""
    height, width = luma.shape
    matrix = np.eye(3)
    if layout.quarter:
        matrix = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, width - 1.0], [0.0, 0.0, 1.0]]) @ matrix
    rotation = np.vstack(
        [cv2.getRotationMatrix2D((0.0, 0.0), layout.angle + (180.0 if half_turn else 0.0), scale), [0, 0, 1]]
    )
    matrix = rotation @ matrix
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64).T
    moved = matrix @ corners
    low, high = moved[:2].min(axis=1), moved[:2].max(axis=1)
    matrix = np.array([[1.0, 0.0, -low[0]], [0.0, 1.0, -low[1]], [0.0, 0.0, 1.0]]) @ matrix
    size = (max(1, int(np.ceil(high[0] - low[0]))), max(1, int(np.ceil(high[1] - low[1]))))
    paper = float(np.median(luma))  # the corners uncovered by the turn get the page's background
    turned = cv2.warpAffine(
        luma,
        matrix[:2],
        size,
        flags=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=paper,
    )
    return turned, matrix[:2]


def map_box_back(
    box: tuple[int, int, int, int], matrix: np.ndarray, shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """A box (x, y, w, h) in the uprighted image as the bounding box in the input image."""
    x, y, w, h = box
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[x, y, 1], [x + w, y, 1], [x, y + h, 1], [x + w, y + h, 1]], np.float64).T
    back = inverse @ corners
    left, top = np.clip(back.min(axis=1), 0, [shape[1], shape[0]])
    right, bottom = np.clip(back.max(axis=1), 0, [shape[1], shape[0]])
    return round(left), round(top), round(right - left), round(bottom - top)
