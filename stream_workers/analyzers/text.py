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

_WORKING_SIDE = 1600
_MIN_SIDE = 1000  # smaller images are upscaled: Tesseract wants ~20 px tall characters
_MIN_CONFIDENCE = 60.0
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
        listing = subprocess.run(
            ["tesseract", "--list-langs"], capture_output=True, text=True, timeout=10
        )
        match = re.search(r'"([^"]+)"', listing.stdout + listing.stderr)
        if match:
            candidates.append(match.group(1))
    candidates += list(_COMMON_TESSDATA)
    for folder in candidates:
        if (Path(folder) / "eng.traineddata").is_file():
            return folder
    raise RuntimeError(
        "no Tesseract language data found: install tesseract-ocr-eng or set TESSDATA_PREFIX"
    )


def _engine() -> tesserocr.PyTessBaseAPI:
    """This thread's Tesseract engine, loaded once."""
    if not hasattr(_local, "api"):
        _local.api = tesserocr.PyTessBaseAPI(
            path=find_tessdata(), lang="eng", psm=tesserocr.PSM.AUTO, oem=tesserocr.OEM.LSTM_ONLY
        )
    return _local.api


def analyze(image: np.ndarray) -> dict:
    """Return the recognised words, their count and their boxes in image coordinates."""
    small, scale = shrink(image, _WORKING_SIDE)
    luma = gray(small)
    longest = max(luma.shape)
    if longest < _MIN_SIDE:
        factor = _MIN_SIDE / longest
        luma = cv2.resize(luma, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        scale *= factor
    words, regions = _recognise(luma, scale)
    return {
        "text_found": bool(words),
        "extracted_text": " ".join(words),
        "word_count": len(words),
        "text_regions": regions,
    }


def _recognise(luma: np.ndarray, scale: float) -> tuple[list[str], list[dict]]:
    """Run Tesseract on a grey image; keep confident words with their boxes scaled back."""
    api = _engine()
    api.SetImage(Image.fromarray(luma))
    api.Recognize()
    words: list[str] = []
    regions: list[dict] = []
    iterator = api.GetIterator()
    level = tesserocr.RIL.WORD
    for word in tesserocr.iterate_level(iterator, level):
        try:
            text = (word.GetUTF8Text(level) or "").strip()
        except RuntimeError:  # tesserocr's way of saying "this element has no text"
            continue
        if (
            not text
            or word.Confidence(level) < _MIN_CONFIDENCE
            or not any(c.isalnum() for c in text)
        ):
            continue
        box = word.BoundingBox(level)
        if box is None:
            continue
        left, top, right, bottom = box
        words.append(text)
        regions.append(
            {
                "x": round(left / scale),
                "y": round(top / scale),
                "width": round((right - left) / scale),
                "height": round((bottom - top) / scale),
            }
        )
    api.Clear()
    return words, regions
