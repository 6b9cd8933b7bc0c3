"""The upload API checks images without loading the analyzers (Tesseract, cascades, models)."""

from __future__ import annotations

from tests.services import python_prints


def test_the_api_does_not_load_the_analyzers() -> None:
    probe = (
        "import sys, ingest_api.app; "
        "print(sorted(m for m in ('tesserocr', 'stream_workers.analyzers') if m in sys.modules))"
    )
    assert python_prints(probe) == "[]"
