"""The analyzer runner: results from real images in storage, and failures turned into error partials."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import pytest

from infra.storage import LocalStorage, StorageError
from schemas.events import ImageUploaded
from stream_workers import analyzers
from stream_workers.runner import AnalyzerRunner, PoisonEvent


def event_for(storage: LocalStorage, corpus: Path, name: str, analyzers_wanted: list[str]) -> ImageUploaded:
    data = (corpus / name).read_bytes()
    storage.put(f"originals/{name}", data, "image/jpeg")
    from PIL import Image

    width, height = Image.open(corpus / name).size
    return ImageUploaded(
        id=7,
        storage_key=f"originals/{name}",
        content_type="image/jpeg",
        size=len(data),
        width=width,
        height=height,
        sha256="x",
        expected_analyzers=analyzers_wanted,
    )


def test_runner_analyses_in_a_process_pool(tmp_path: Path, corpus: Path) -> None:
    storage = LocalStorage(tmp_path)
    runner = AnalyzerRunner("faces", functools.partial(LocalStorage, tmp_path), processes=1, timeout_s=60)
    try:
        event = event_for(storage, corpus, "basketball2.png", ["faces"])
        partial = asyncio.run(runner.handle(event))
    finally:
        runner.close()
    assert partial.status == "ok" and partial.result["faces_detected"] == 1
    box = partial.result["face_locations"][0]
    assert 0 <= box["x"] < event.width and 0 <= box["y"] < event.height


def test_every_analysis_process_starts_before_the_first_event(tmp_path: Path) -> None:
    runner = AnalyzerRunner("scene", functools.partial(LocalStorage, tmp_path), processes=2, timeout_s=60)
    try:
        processes = [each.process for each in runner._processes._all]  # type: ignore[union-attr]
        assert len(processes) == 2 and all(process.is_alive() for process in processes)
    finally:
        runner.close()


def test_an_analyzer_that_raises_produces_an_error_partial(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Failure injection: the scene analyzer is replaced by one that raises.
    def explode(_image):  # type: ignore[no-untyped-def]
        raise RuntimeError("scene model exploded")

    broken = analyzers.Analyzer("scene", "9", ("scene_type",), explode)
    monkeypatch.setitem(analyzers.REGISTRY, "scene", broken)
    storage = LocalStorage(tmp_path)
    runner = AnalyzerRunner("scene", functools.partial(LocalStorage, tmp_path), processes=0, timeout_s=30)
    try:
        partial = asyncio.run(runner.handle(event_for(storage, corpus, "apple.jpg", ["scene"])))
    finally:
        runner.close()
    assert partial.status == "error" and partial.result is None
    assert partial.error == "RuntimeError: scene model exploded" and partial.analyzer_version == "9"


def test_a_hanging_analyzer_is_cut_off_at_its_time_limit(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Failure injection: the colors analyzer never returns within the limit.
    monkeypatch.setitem(
        analyzers.REGISTRY,
        "colors",
        analyzers.Analyzer("colors", "9", ("brightness",), lambda _image: time.sleep(3)),
    )
    storage = LocalStorage(tmp_path)
    runner = AnalyzerRunner("colors", functools.partial(LocalStorage, tmp_path), processes=0, timeout_s=0.5)
    try:
        partial = asyncio.run(runner.handle(event_for(storage, corpus, "apple.jpg", ["colors"])))
    finally:
        runner.close()
    assert partial.status == "error" and "longer than the 0.5 s limit" in partial.error


def test_undecodable_bytes_give_an_error_partial_in_words(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("originals/bad.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "image/png")
    event = ImageUploaded(
        id=1,
        storage_key="originals/bad.png",
        content_type="image/png",
        size=78,
        width=10,
        height=10,
        sha256="x",
        expected_analyzers=["quality"],
    )
    runner = AnalyzerRunner("quality", functools.partial(LocalStorage, tmp_path), processes=0, timeout_s=30)
    try:
        partial = asyncio.run(runner.handle(event))
    finally:
        runner.close()
    assert partial.status == "error" and partial.error.startswith("the image could not be decoded")


def test_poison_events_are_named_as_such(tmp_path: Path) -> None:
    runner = AnalyzerRunner("quality", functools.partial(LocalStorage, tmp_path), processes=0, timeout_s=30)
    try:
        with pytest.raises(PoisonEvent, match="malformed"):
            runner.parse(b"{not json")
        with pytest.raises(PoisonEvent, match="unknown schema_version 99"):
            runner.parse(
                b'{"schema_version": 99, "id": 1, "storage_key": "k", "content_type": "image/png",'
                b' "size": 1, "width": 1, "height": 1, "sha256": "x", "expected_analyzers": []}'
            )
        missing = ImageUploaded(
            id=1,
            storage_key="originals/gone.png",
            content_type="image/png",
            size=1,
            width=1,
            height=1,
            sha256="x",
            expected_analyzers=["quality"],
        )
        with pytest.raises(PoisonEvent, match="no longer in storage"):
            asyncio.run(runner.handle(missing))
    finally:
        runner.close()


class UnreachableStorage(LocalStorage):
    """Failure injection: storage that is away (every read fails as S3 does when it is down)."""

    def get(self, key: str) -> bytes:
        raise StorageError(f"could not read {key}: connection refused")


def test_storage_away_is_not_blamed_on_the_image(tmp_path: Path, corpus: Path) -> None:
    # The pool reads the image itself; a storage outage must reach the worker as an error of its
    # own (the worker restarts and the event is read again), never become an error partial.
    event = event_for(LocalStorage(tmp_path), corpus, "apple.jpg", ["quality"])
    runner = AnalyzerRunner(
        "quality", functools.partial(UnreachableStorage, tmp_path), processes=1, timeout_s=60
    )
    try:
        with pytest.raises(StorageError, match="connection refused"):
            asyncio.run(runner.handle(event))
    finally:
        runner.close()
