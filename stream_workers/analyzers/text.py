"""Text (OCR) with Tesseract driven in-process through tesserocr: pages and scene text."""

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
from stream_workers.analyzers._letters import letter_lines  # noqa: E402
from stream_workers.analyzers._page import PageLayout, find_page, map_box_back, upright  # noqa: E402

FIELDS = ("text_found", "extracted_text", "word_count", "text_regions")
VERSION = "3"

_WORKING_SIDE = 2048  # crops and pages are cut from this
_PAGE_BAND_HEIGHT = 14.0  # a page's x-height band is scaled to about this many pixels
_PAGE_MAX_SIDE = 3000
_WORDS_PER_LINE = 4  # an upright page reads at least this many confident words per line
_SURE_PAGE = 85.0  # ... with at least this mean confidence
_DETECTION_SIDES = (1024, 512, 256)  # big letters merge into words only at the coarser sizes
_LINE_HEIGHT = 40  # crops are rescaled so a line is this tall: Tesseract likes 20-40 px letters
_MAX_LINES = 16  # candidate lines read, letter rows first; more are texture, not text
_MIN_CONFIDENCE = 70.0
_MIN_STROKE_CONTRAST = 25  # grey levels between a letter stroke and its surroundings
_SHORT_WORD_CONFIDENCE = 85.0  # words under four letters: textures easily pass for "ws" or "Oo"
_VOUCHED_SHORT_CONFIDENCE = 45.0  # a short word read beside an accepted longer word
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

    A page of text lines (found from its row profile at any skew or quarter turn) is turned
    upright, made dark-on-light, evenly lit, contrast-stretched, scaled to a readable letter size
    and read as a page, the other way up too unless the reading is rich and sure. Otherwise
    text-like regions are looked for: rows of letter-shaped blobs (dark or light) and stroke
    edges that close into word-shaped blobs, at several scales; with none, OCR is skipped; each
    is read on its own, cropped, rescaled and binarised with the text made dark.
    """
    small, scale = shrink(image, _WORKING_SIDE)
    luma = gray(small)
    layout = find_page(luma)
    if layout is not None:
        words = _read_page(luma, layout)
    else:
        lines = _candidate_lines(luma)
        words = [
            word
            for box, dark, breaks in sorted(lines, key=lambda line: (line[0][1], line[0][0]))
            for word in _read_line(luma, box, dark, breaks)
        ]
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


_Candidate = tuple[tuple[int, int, int, int], bool | None, tuple[int, ...]]


def _candidate_lines(luma: np.ndarray) -> list[_Candidate]:
    """Up to _MAX_LINES boxes (x, y, w, h in `luma` pixels) worth reading, with the letters'
    polarity and word breaks when known: rows of letters first (longest first), then word-shaped
    edge blobs."""
    boxes: list[_Candidate] = [(line.box, line.dark, line.breaks) for line in letter_lines(luma)]
    edge_boxes: list[tuple[int, int, int, int]] = []
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
            edge_boxes.append(tuple(round(v / factor) for v in (x, y, w, h)))  # type: ignore[arg-type]
    boxes += [(box, None, ()) for box in sorted(edge_boxes, key=lambda box: -box[2] * box[3])]
    kept: list[_Candidate] = []
    for candidate in boxes:
        if not any(_overlap(candidate[0], other[0]) > 0.5 for other in kept):
            kept.append(candidate)
    return kept[:_MAX_LINES]


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection over the smaller box's area."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / min(a[2] * a[3], b[2] * b[3])


def _read_line(
    luma: np.ndarray, box: tuple[int, int, int, int], dark: bool | None, breaks: tuple[int, ...]
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """OCR one candidate line: crop with a margin, scale, binarise dark-on-white, PSM 7.

    With the letters' polarity known (`dark`), a black-hat or top-hat transform as wide as half a
    letter keeps the strokes and drops the sign's frame and shading; blobs cut by the crop's edge
    are frame, not letters. Otherwise Otsu's threshold, with the majority taken as background.
    At each of `breaks` (x in `luma`) white space is widened so that Tesseract sees a word break.
    """
    x, y, w, h = box
    pad = max(2, h // 3)
    left, top = max(0, x - pad), max(0, y - pad)
    crop = luma[top : y + h + pad, left : x + w + pad]
    factor = _LINE_HEIGHT / h
    space = _LINE_HEIGHT // 2  # white columns inserted at a word break
    crop = cv2.resize(
        crop,
        None,
        fx=factor,
        fy=factor,
        interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA,
    )
    if dark is None:
        _, binary = cv2.threshold(crop, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        if binary.mean() < 128:  # strokes cover less than half a line: dark majority = background
            binary = 255 - binary
    else:
        binary = 255 - _letter_ink(crop, dark)
    spaces = sorted(round((position - left) * factor) for position in breaks)
    for offset, column in enumerate(spaces):
        binary = np.insert(binary, [column + offset * space] * space, 255, axis=1)
    margin = _LINE_HEIGHT // 2  # Tesseract reads a line best with white space around it
    binary = cv2.copyMakeBorder(binary, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=255)
    words = _recognise(binary, tesserocr.PSM.SINGLE_LINE, vouched_short=_VOUCHED_SHORT_CONFIDENCE)

    def unspaced(x: int) -> int:
        """An x in the widened line back to the crop, less the space inserted before it."""
        return x - space * sum(column + index * space < x for index, column in enumerate(spaces))

    return [
        (
            text,
            (
                left + round(unspaced(wx - margin) / factor),
                top + round((wy - margin) / factor),
                round(ww / factor),
                round(wh / factor),
            ),
        )
        for text, (wx, wy, ww, wh), _ in words
    ]


def _letter_ink(crop: np.ndarray, dark: bool) -> np.ndarray:
    """White-on-black letter strokes of a line crop, without frame pieces cut by the crop edge.

    The hat response is thresholded (Otsu) in windows about a letter wide, so a letter under a
    glare or in shadow, fainter than its neighbours, still counts.
    """
    side = (_LINE_HEIGHT // 2) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))
    hat = cv2.morphologyEx(crop, cv2.MORPH_BLACKHAT if dark else cv2.MORPH_TOPHAT, kernel)
    ink = np.zeros_like(hat)
    step = _LINE_HEIGHT * 3 // 2
    for start in range(0, hat.shape[1], step):
        window = hat[:, start : start + step + step // 2]
        level, _ = cv2.threshold(window, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        ink[:, start : start + step] = np.where(
            hat[:, start : start + step] > max(level, _MIN_STROKE_CONTRAST), 255, 0
        )
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink)
    rows, columns = ink.shape
    x, y, w, h = (stats[:, index] for index in range(4))
    cut = (x == 0) | (y == 0) | (x + w >= columns) | (y + h >= rows)
    keep = ~cut & (h >= 0.3 * _LINE_HEIGHT)
    keep[0] = False
    return np.where(keep[labels], 255, 0).astype(np.uint8)


def _read_page(luma: np.ndarray, layout: PageLayout) -> list[tuple[str, tuple[int, int, int, int]]]:
    """OCR a page: upright, contrast-stretched, dark-on-light, letters scaled to a readable size.

    Upside-down text still yields some "confident" garbage words, but fewer and less sure of
    themselves; so unless the first reading is rich and sure, the page is read the other way up
    too, and the reading with the larger sum of word confidences wins.
    """
    scale = float(np.clip(_PAGE_BAND_HEIGHT / layout.line_height, 0.5, 3.0))
    scale = min(scale, _PAGE_MAX_SIDE / max(luma.shape))
    best: list[tuple[str, tuple[int, int, int, int], float]] = []
    best_matrix = np.eye(2, 3)
    for half_turn in (False, True):
        page, matrix = upright(luma, layout, half_turn, scale)
        page = _stretch(_even_light(_dark_on_light(page)))
        words = _recognise(page, tesserocr.PSM.AUTO, min_letters=1, vouched_short=_MIN_CONFIDENCE)
        certainty = sum(confidence for _, _, confidence in words)
        if certainty > sum(confidence for _, _, confidence in best) or not half_turn:
            best, best_matrix = words, matrix
        if len(words) >= _WORDS_PER_LINE * layout.lines and certainty >= _SURE_PAGE * len(words):
            break
    return [(text, map_box_back(box, best_matrix, luma.shape)) for text, box, _ in best]


def _stretch(luma: np.ndarray) -> np.ndarray:
    """Spread the 1st-99th percentile grey levels over 0-255 (faint, low-contrast print)."""
    low, high = np.percentile(luma, (1, 99))
    if high - low < 8 or (low <= 2 and high >= 253):
        return luma
    stretched = (luma.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(stretched, 0, 255).astype(np.uint8)


def _even_light(luma: np.ndarray) -> np.ndarray:
    """Divide out uneven lighting: the paper's brightness, from a max filter wider than letters."""
    side = round(3 * _PAGE_BAND_HEIGHT) | 1
    paper = cv2.dilate(luma, cv2.getStructuringElement(cv2.MORPH_RECT, (side, side)))
    paper = cv2.blur(paper, (side, side))
    return cv2.divide(luma, paper, scale=255)


def _dark_on_light(luma: np.ndarray) -> np.ndarray:
    """Invert light-on-dark text: ink is the minority class, so a dark majority is background."""
    _, binary = cv2.threshold(luma, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return 255 - luma if binary.mean() < 128 else luma


def _recognise(
    luma: np.ndarray, mode: int, vouched_short: float, min_letters: int = 2
) -> list[tuple[str, tuple[int, int, int, int], float]]:
    """Run Tesseract on a grey image; keep confident words with their (x, y, w, h) boxes and
    confidences.

    Scene crops ask for two letters or digits a word: a lone confident character there is
    nearly always a texture; on a page, "a" and "I" are words. Words under four letters are
    easily dreamt up from textures ("ws", "Oo"), so alone they need a higher confidence; beside
    an accepted longer word they are real text, and Tesseract is unsure of short words in display
    type ("NO" of "NO PARKING"), so there `vouched_short` will do. (Not on pages: a page read
    upside down is full of garbage "words" that would vouch for each other.)
    """
    api = _engine()
    api.SetPageSegMode(mode)
    api.SetImage(Image.fromarray(luma))
    api.Recognize()
    found: list[tuple[str, tuple[int, int, int, int], float, bool]] = []
    level = tesserocr.RIL.WORD
    for word in tesserocr.iterate_level(api.GetIterator(), level):
        try:
            text = (word.GetUTF8Text(level) or "").strip()
        except RuntimeError:  # tesserocr's way of saying "this element has no text"
            continue
        box = word.BoundingBox(level)
        letters = sum(character.isalnum() for character in text)
        if box is None or letters < min_letters:
            continue
        left, top, right, bottom = box
        found.append((text, (left, top, right - left, bottom - top), word.Confidence(level), letters < 4))
    api.Clear()
    vouched = any(not short and confidence >= _MIN_CONFIDENCE for _, _, confidence, short in found)
    short_needs = vouched_short if vouched else _SHORT_WORD_CONFIDENCE
    return [
        (text, box, confidence)
        for text, box, confidence, short in found
        if confidence >= (short_needs if short else _MIN_CONFIDENCE)
    ]
