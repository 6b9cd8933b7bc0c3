"""Text (OCR) with Tesseract driven in-process through tesserocr."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # must precede loading libtesseract

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tesserocr  # noqa: E402
from PIL import Image  # noqa: E402

from stream_workers.analyzers._image import gray, shrink  # noqa: E402

FIELDS = ("text_found", "extracted_text", "word_count", "text_regions")
VERSION = "2"

_WORKING_SIDE = 2048  # crops are cut from this; the full page is read at _PAGE_SIDE
_PAGE_SIDE = 1600
_DETECTION_SIDES = (1024, 512, 256)  # big letters merge into words only at the coarser sizes
_LINE_HEIGHT = 40  # crops are rescaled so a line is this tall: Tesseract likes 20-40 px letters
_MAX_LINES = 12  # more candidate lines than this: read the whole page instead
_MIN_CONFIDENCE = 70.0
_COMMON_TESSDATA = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
    "/opt/homebrew/share/tessdata",
)
_local = threading.local()  # a TessBaseAPI serves one thread at a time


def find_tessdata() -> str:
    """Find the folder with eng.traineddata: TESSDATA_PREFIX, the tesseract CLI, usual paths."""
    candidates: list[str] = []
    if os.environ.get("TESSDATA_PREFIX"):
        prefix = os.environ["TESSDATA_PREFIX"]
        candidates += [prefix, os.path.join(prefix, "tessdata")]
    if shutil.which("tesseract"):
        listing = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, timeout=10)
        match = re.search(r'"([^"]+)"', listing.stdout + listing.stderr)
        if match:
            candidates.append(match.group(1))
    candidates += list(_COMMON_TESSDATA)
    for folder in candidates:
        if (Path(folder) / "eng.traineddata").is_file():
            return folder
    raise RuntimeError("no Tesseract language data found: install tesseract-ocr-eng or set TESSDATA_PREFIX")


def _engine() -> tesserocr.PyTessBaseAPI:
    """This thread's Tesseract engine, loaded once."""
    if not hasattr(_local, "api"):
        _local.api = tesserocr.PyTessBaseAPI(
            path=find_tessdata(), lang="eng", psm=tesserocr.PSM.AUTO, oem=tesserocr.OEM.LSTM_ONLY
        )
    return _local.api


def analyze(image: np.ndarray) -> dict:
    """Return the recognised words, their count and their boxes in image coordinates.

    Text-like regions are found first (stroke edges that close into word-shaped blobs, at three
    scales); with none, OCR is skipped. A few regions (scene text) are read one by one, cropped,
    upscaled and binarised with the text made dark; many regions (a document) are read as a page.
    """
    small, scale = shrink(image, _WORKING_SIDE)
    luma = gray(small)
    lines = _candidate_lines(luma)
    if not lines:
        words: list[tuple[str, tuple[int, int, int, int]]] = []
    elif len(lines) > _MAX_LINES:
        words = _read_page(luma)
    else:
        words = [word for line in lines for word in _read_line(luma, line)]
    regions = [
        {
            "x": round(x / scale),
            "y": round(y / scale),
            "width": round(w / scale),
            "height": round(h / scale),
        }
        for _, (x, y, w, h) in words
    ]
    return {
        "text_found": bool(words),
        "extracted_text": " ".join(text for text, _ in words),
        "word_count": len(words),
        "text_regions": regions,
    }


def _candidate_lines(luma: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h in `luma` pixels) of word-shaped clusters of strokes, top to bottom."""
    boxes: list[tuple[int, int, int, int]] = []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    for side in _DETECTION_SIDES:
        work, factor = shrink(luma, side)
        if factor == 1.0 and side != _DETECTION_SIDES[0]:
            continue
        gradient = cv2.morphologyEx(work, cv2.MORPH_GRADIENT, kernel)
        _, edges = cv2.threshold(gradient, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        joined = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (9, 1)))
        count, _, stats, _ = cv2.connectedComponentsWithStats(joined)
        height, width = work.shape
        for x, y, w, h, area in stats[1:count]:
            if h < 8 or h > height / 3 or w < 1.5 * h or w > 0.95 * width:
                continue
            if area / (w * h) < 0.35:
                continue
            box = tuple(round(v / factor) for v in (x, y, w, h))
            if not any(_overlap(box, kept) > 0.5 for kept in boxes):
                boxes.append(box)
    return sorted(boxes, key=lambda box: (box[1], box[0]))


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection over the smaller box's area."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / min(a[2] * a[3], b[2] * b[3])


def _read_line(
    luma: np.ndarray, box: tuple[int, int, int, int]
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """OCR one candidate line: crop with a margin, scale, binarise dark-on-white, PSM 7."""
    x, y, w, h = box
    pad = max(2, h // 3)
    left, top = max(0, x - pad), max(0, y - pad)
    crop = luma[top : y + h + pad, left : x + w + pad]
    factor = _LINE_HEIGHT / h
    crop = cv2.resize(
        crop,
        None,
        fx=factor,
        fy=factor,
        interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA,
    )
    _, binary = cv2.threshold(crop, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if binary.mean() < 128:  # strokes cover less than half a line: dark majority = background
        binary = 255 - binary
    words = _recognise(binary, tesserocr.PSM.SINGLE_LINE)
    return [
        (text, (left + round(wx / factor), top + round(wy / factor), round(ww / factor), round(wh / factor)))
        for text, (wx, wy, ww, wh) in words
    ]


def _read_page(luma: np.ndarray) -> list[tuple[str, tuple[int, int, int, int]]]:
    """OCR a document-like image as a page (automatic layout analysis)."""
    page, factor = shrink(luma, _PAGE_SIDE)
    words = _recognise(page, tesserocr.PSM.AUTO)
    return [
        (text, tuple(round(v / factor) for v in box))  # type: ignore[misc]
        for text, box in words
    ]


def _recognise(luma: np.ndarray, mode: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Run Tesseract on a grey image; keep confident words with their (x, y, w, h) boxes."""
    api = _engine()
    api.SetPageSegMode(mode)
    api.SetImage(Image.fromarray(luma))
    api.Recognize()
    words: list[tuple[str, tuple[int, int, int, int]]] = []
    level = tesserocr.RIL.WORD
    for word in tesserocr.iterate_level(api.GetIterator(), level):
        try:
            text = (word.GetUTF8Text(level) or "").strip()
        except RuntimeError:  # tesserocr's way of saying "this element has no text"
            continue
        box = word.BoundingBox(level)
        if box is None or word.Confidence(level) < _MIN_CONFIDENCE:
            continue
        if sum(character.isalnum() for character in text) < 2:
            continue
        left, top, right, bottom = box
        words.append((text, (left, top, right - left, bottom - top)))
    api.Clear()
    return words
