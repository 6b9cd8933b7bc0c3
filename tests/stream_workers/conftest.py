"""Fixtures for the analyzer tests: the shared, hand-labelled corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_workers.decode import decode_image

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus_image():
    """Load a corpus image by file name, decoded to BGR (skips when the corpus is absent)."""
    cache: dict[str, np.ndarray] = {}

    def load(name: str) -> np.ndarray:
        path = CORPUS / name
        if not path.is_file():
            pytest.skip(f"corpus image {path} not available")
        if name not in cache:
            cache[name] = decode_image(path.read_bytes())
        return cache[name]

    return load
