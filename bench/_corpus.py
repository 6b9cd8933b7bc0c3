"""Shared helpers for the benchmarks and tests: the labelled corpus, scoring, big test JPEGs."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}


@dataclass(frozen=True)
class Sample:
    """One corpus image: its name, raw bytes and hand labels (None = not labelled)."""

    name: str
    data: bytes
    faces: int | None
    text: str | None
    scene: str | None


def load_corpus(folder: Path = CORPUS) -> list[Sample]:
    """Every image in the corpus folder with its labels from labels.json, sorted by name."""
    labels = json.loads((folder / "labels.json").read_text())
    samples = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        label = labels.get(path.name, {})
        samples.append(
            Sample(
                name=path.name,
                data=path.read_bytes(),
                faces=label.get("faces"),
                text=label.get("text"),
                scene=label.get("scene"),
            )
        )
    return samples


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words, apostrophes dropped ("FOSTER'S" -> "fosters")."""
    return re.findall(r"[a-z0-9]+", text.lower().replace("'", "").replace("’", ""))


def word_recall(expected: str, recognised: str) -> float:
    """Share of the expected words (as a multiset) that were recognised."""
    wanted = Counter(words(expected))
    if not wanted:
        return 1.0
    found = Counter(words(recognised))
    return sum((wanted & found).values()) / sum(wanted.values())


def _lab(hex_colors: list[str]) -> np.ndarray:
    """'#rrggbb' strings to CIE L*a*b* (D65) rows."""
    rgb = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in hex_colors], np.float32)
    return cv2.cvtColor((rgb / 255.0).reshape(-1, 1, 3), cv2.COLOR_RGB2Lab).reshape(-1, 3)


def palette_delta_e(reference: list[str], shares: list[float], candidate: list[str]) -> float:
    """Share-weighted mean CIE76 ΔE from each reference colour to its nearest candidate colour."""
    distances = np.linalg.norm(_lab(reference)[:, None, :] - _lab(candidate)[None], axis=2)
    nearest = distances.min(axis=1)
    weights = np.asarray(shares, np.float64)
    return float((nearest * weights).sum() / weights.sum())


def big_jpeg(source: bytes, megapixels: float, seed: int = 0) -> bytes:
    """A phone-sized JPEG (4:3, ~`megapixels` MP): a corpus photo upscaled, with sensor-like noise."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    image = np.asarray(Image.open(io.BytesIO(source)).convert("RGB"))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(seed).normal(0, 6, image.shape[:2] + (1,)).astype(np.float32)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
