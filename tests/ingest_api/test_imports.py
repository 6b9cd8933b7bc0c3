"""The upload API checks images without loading the analyzers (Tesseract, cascades, models)."""

from __future__ import annotations

import subprocess
import sys

from tests.services import REPO


def test_the_api_does_not_load_the_analyzers() -> None:
    probe = (
        "import sys, ingest_api.app; "
        "print(sorted(m for m in ('tesserocr', 'stream_workers.analyzers') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    assert loaded.stdout.strip() == "[]"
