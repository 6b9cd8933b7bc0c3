"""Settings that take more than one value: analysis processes per analyzer."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.settings import Settings


def test_text_gets_two_analysis_processes_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEEK_WORKER_PROCESSES", raising=False)
    settings = Settings()
    assert settings.processes_for("text") == 2
    assert [settings.processes_for(name) for name in ("colors", "quality", "faces", "scene")] == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", {"colors": 0, "text": 0}),
        ("3", {"colors": 3, "text": 3}),
        ("2, faces=4", {"colors": 2, "faces": 4, "text": 2}),
        ("text=3", {"colors": 1, "text": 3}),
    ],
)
def test_one_count_for_all_then_counts_by_analyzer(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: dict[str, int]
) -> None:
    monkeypatch.setenv("PEEK_WORKER_PROCESSES", value)
    settings = Settings()
    assert {name: settings.processes_for(name) for name in expected} == expected


@pytest.mark.parametrize("value", ["two", "text=many", "ocr=2", "-1"])
def test_unreadable_process_counts_are_refused_with_the_analyzer_names(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PEEK_WORKER_PROCESSES", value)
    with pytest.raises(ValidationError, match="analyzer=count pairs"):
        Settings()
