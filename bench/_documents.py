"""Synthetic document images with known text, rendered at run time (nothing is stored in git).

The corpus labels no document text, so OCR on documents is measured on pages rendered here:
known paragraphs at several letter sizes, turned 90/180/270°, skewed, inverted (light on dark),
in low contrast and in small print.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

PARAGRAPHS = (
    "The harbour master counted eleven fishing boats before noon, and wrote each name into the "
    "ledger beside the weight of the catch. Storms were expected later in the week, so the "
    "crews hurried to mend their nets while the water stayed calm.",
    "Our quarterly report shows that customer orders grew by twelve percent, while delivery "
    "times fell from four days to three. The warehouse team moved to a new building in March "
    "and finished the inventory audit two weeks early.",
    "Please remember to switch off the lights and close every window when you leave the "
    "laboratory. Samples must be labelled with the date, the project number and your initials "
    "before they are placed in the freezer.",
)
_FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
)


@dataclass(frozen=True)
class Document:
    """One rendered page: a name saying how it was made, BGR pixels, and the words on it."""

    name: str
    image: np.ndarray
    text: str


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A scalable TrueType font from the machine, else Pillow's built-in scalable default."""
    for path in _FONT_FILES:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def render(text: str, font_size: int, width: int = 900, ink: int = 20, paper: int = 245) -> np.ndarray:
    """Word-wrap `text` onto a grey page `width` pixels wide; return it as a BGR image."""
    font = _font(font_size)
    margin = font_size * 2
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and measure.textlength(candidate, font=font) <= width - 2 * margin:
            lines[-1] = candidate
        else:
            lines.append(word)
    line_height = round(font_size * 1.5)
    page = Image.new("L", (width, 2 * margin + line_height * len(lines)), paper)
    draw = ImageDraw.Draw(page)
    for index, line in enumerate(lines):
        draw.text((margin, margin + index * line_height), line, fill=ink, font=font)
    return cv2.cvtColor(np.asarray(page), cv2.COLOR_GRAY2BGR)


def _skew(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate by a small angle on an enlarged canvas filled with the page colour."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    size = (int(height * sin + width * cos), int(height * cos + width * sin))
    matrix[:, 2] += (size[0] - width) / 2, (size[1] - height) / 2
    paper = tuple(int(v) for v in image[0, 0])
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderValue=paper)


def _photographed(image: np.ndarray) -> np.ndarray:
    """Uneven light, slight defocus, sensor noise and JPEG artefacts, as from a phone camera."""
    height, width = image.shape[:2]
    light = np.linspace(1.0, 0.55, width, dtype=np.float32)[None, :, None]
    blurred = cv2.GaussianBlur(image, (0, 0), 0.9).astype(np.float32) * light
    noise = np.random.default_rng(0).normal(0, 8, blurred.shape[:2] + (1,)).astype(np.float32)
    noisy = np.clip(blurred + noise, 0, 255).astype(np.uint8)
    _, encoded = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 60])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)


_VARIANTS: dict[str, Callable[[str], np.ndarray]] = {
    "plain 16px": lambda text: render(text, 16),
    "plain 24px": lambda text: render(text, 24),
    "large 40px": lambda text: render(text, 40, width=1400),
    "small 10px": lambda text: render(text, 10, width=560),
    "turned 90": lambda text: np.rot90(render(text, 20), 1),
    "upside down": lambda text: np.rot90(render(text, 20), 2),
    "turned 270": lambda text: np.rot90(render(text, 20), 3),
    "skewed 7deg": lambda text: _skew(render(text, 20), 7.0),
    "inverted": lambda text: render(text, 20, ink=235, paper=30),
    "low contrast": lambda text: render(text, 20, ink=150, paper=185),
    "small 8px": lambda text: render(text, 8, width=460),
    "photographed": lambda text: _photographed(render(text, 18)),
}


def documents() -> list[Document]:
    """Every variant of every paragraph, as contiguous BGR images."""
    return [
        Document(name=f"{variant} #{index}", image=np.ascontiguousarray(make(text)), text=text)
        for variant, make in _VARIANTS.items()
        for index, text in enumerate(PARAGRAPHS)
    ]
