"""Settings that take more than one value: analysis processes per analyzer."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.settings import Settings


def test_text_and_faces_get_two_analysis_processes_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEEK_WORKER_PROCESSES", raising=False)
    settings = Settings()
    assert [settings.processes_for(name) for name in ("text", "faces")] == [2, 2]
    assert [settings.processes_for(name) for name in ("colors", "quality", "scene")] == [1, 1, 1]


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


def test_each_worker_keeps_eight_images_per_process_in_flight_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PEEK_WORKER_PROCESSES", "1,text=3")
    monkeypatch.delenv("PEEK_WORKER_CONCURRENCY", raising=False)
    assert [Settings().concurrency_for(name) for name in ("colors", "text")] == [8, 24]
    monkeypatch.setenv("PEEK_WORKER_PROCESSES", "0")  # threads in the worker: as for one process
    assert Settings().concurrency_for("colors") == 8
    monkeypatch.setenv("PEEK_WORKER_CONCURRENCY", "5")
    assert Settings().concurrency_for("text") == 5
