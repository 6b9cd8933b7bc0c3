"""`peek analyze` works on local files with no services at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.services import REPO, python_prints


def test_peek_analyze_prints_one_json_object_per_file(corpus: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_THREAD_LIMIT": "1"}  # no service variables
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "analyze",
            str(corpus / "basketball2.png"),
            str(corpus / "imageTextN.png"),
            str(broken),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1  # one file failed
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [Path(r["file"]).name for r in records] == ["basketball2.png", "imageTextN.png", "broken.jpg"]
    face, sign, bad = records
    assert face["faces_detected"] == 1 and len(face["dominant_colors"]) >= 1
    assert sign["text_found"] is True and sign["word_count"] > 10 and "book" in sign["extracted_text"]
    assert "error" in bad and "dominant_colors" not in bad
    for record in (face, sign):
        assert {
            "brightness",
            "sharpness_score",
            "blur_level",
            "contrast_score",
            "quality_score",
            "scene_type",
            "scene_confidence",
            "word_count",
            "face_locations",
        } <= set(record)


def test_faust_apps_run_on_uvloop() -> None:
    probe = (
        "import asyncio; from infra.cli import _use_uvloop; _use_uvloop(); "
        "print(type(asyncio.new_event_loop()).__module__)"
    )
    assert python_prints(probe, timeout_s=60).startswith("uvloop")
