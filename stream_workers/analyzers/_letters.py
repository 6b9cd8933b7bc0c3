"""Scene-text line proposals from letter-shaped blobs grouped into rows.

Letters are strokes narrower than their surroundings: a black-hat (dark letters) or top-hat
(light letters) transform keeps them and drops large dark or light areas such as a sign's frame
or a shadow. Blobs of letter shape that sit side by side at a similar height, with gaps under a
letter height, make a line; three or more of them are worth reading. Unlike edge blobs, this
finds widely spaced capitals ("H O T E L") and letters inside a busy frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stream_workers.analyzers._image import shrink

__all__ = ["LetterLine", "letter_lines"]

_SIDES = (1024, 384)  # letters 8-256 px tall at the first size, bigger ones at the second
_HAT_SIDE = 15  # wider than the strokes of the letters looked for
_MIN_CONTRAST = 40  # grey levels between a stroke and its surroundings
_MIN_LETTERS = 3
_MAX_BLOBS = 1500  # more letter-shaped blobs than this is foliage or gravel, not text
_PAIR_CHUNK = 256


@dataclass(frozen=True)
class LetterLine:
    """A row of letter-shaped blobs: its box (x, y, w, h), their count, whether they are dark, and
    the x of each gap much wider than the others (a word break OCR may not see in tight type)."""

    box: tuple[int, int, int, int]
    letters: int
    dark: bool
    breaks: tuple[int, ...] = ()


def letter_lines(luma: np.ndarray) -> list[LetterLine]:
    """Rows of letters found in `luma` (boxes in its pixels), the longest rows first."""
    lines: list[LetterLine] = []
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (_HAT_SIDE, _HAT_SIDE))
    for side in _SIDES:
        work, factor = shrink(luma, side)
        if factor == 1.0 and side != _SIDES[0]:
            continue
        for dark, operation in ((True, cv2.MORPH_BLACKHAT), (False, cv2.MORPH_TOPHAT)):
            hat = cv2.morphologyEx(work, operation, kernel)
            level, _ = cv2.threshold(hat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            _, ink = cv2.threshold(hat, max(level, _MIN_CONTRAST), 255, cv2.THRESH_BINARY)
            count, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
            blobs = stats[1:count].astype(np.float64)
            x, y, w, h, area = blobs.T
            letter_like = (
                (h >= 8)
                & (h <= work.shape[0] / 4)
                & (w <= 2.0 * h)
                & (w >= 0.1 * h)
                & (area >= 0.15 * w * h)
                & (area <= 0.9 * w * h)
            )
            blobs = blobs[letter_like]
            if not _MIN_LETTERS <= len(blobs) <= _MAX_BLOBS:
                continue
            for members in _rows(blobs):
                left, top = blobs[members, 0].min(), blobs[members, 1].min()
                right = (blobs[members, 0] + blobs[members, 2]).max()
                bottom = (blobs[members, 1] + blobs[members, 3]).max()
                box = tuple(round(v / factor) for v in (left, top, right - left, bottom - top))
                breaks = tuple(round(position / factor) for position in _word_breaks(blobs[members]))
                lines.append(LetterLine(box=box, letters=len(members), dark=dark, breaks=breaks))  # type: ignore[arg-type]
    return sorted(lines, key=lambda line: -line.letters)


def _rows(blobs: np.ndarray) -> list[np.ndarray]:
    """Indices of blobs chained into rows: similar height, centres level, gaps under a height."""
    x, y, w, h = (blobs[:, index].astype(np.float32) for index in range(4))
    centre, end = y + h / 2, x + w
    pairs: list[np.ndarray] = []
    for start in range(0, len(blobs), _PAIR_CHUNK):  # chunks keep the pair matrices small
        rows = slice(start, start + _PAIR_CHUNK)
        taller = np.maximum(h[rows, None], h[None])
        shorter = np.minimum(h[rows, None], h[None])
        gap = np.maximum(x[rows, None], x[None]) - np.minimum(end[rows, None], end[None])
        linked = (
            (taller <= 1.5 * shorter)
            & (np.abs(centre[rows, None] - centre[None]) <= 0.3 * taller)
            & (gap <= taller)
        )
        first, second = np.nonzero(linked)
        pairs.append(np.stack([first + start, second], axis=1))
    count, labels = _components(len(blobs), np.concatenate(pairs))
    sizes = np.bincount(labels, minlength=count)
    return [np.flatnonzero(labels == label) for label in range(count) if sizes[label] >= _MIN_LETTERS]


def _word_breaks(row: np.ndarray) -> list[float]:
    """Middles of the gaps in a row over 2.5 times its median letter gap and a tenth of a height."""
    row = row[np.argsort(row[:, 0])]
    ends = row[:-1, 0] + row[:-1, 2]
    gaps = np.maximum(0.0, row[1:, 0] - ends)
    wide = (gaps > 2.5 * float(np.median(gaps))) & (gaps > 0.1 * float(np.median(row[:, 3])))
    return [float(end + gap / 2) for end, gap in zip(ends[wide], gaps[wide], strict=True)]


def _components(nodes: int, pairs: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of an undirected graph given as (first, second) node pairs."""
    parent = np.arange(nodes)

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for first, second in pairs[pairs[:, 0] < pairs[:, 1]].tolist():
        a, b = root(first), root(second)
        if a != b:
            parent[a] = b
    roots = np.array([root(node) for node in range(nodes)])
    _, labels = np.unique(roots, return_inverse=True)
    return int(labels.max()) + 1 if len(labels) else 0, labels
