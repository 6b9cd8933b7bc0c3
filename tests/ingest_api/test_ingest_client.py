"""The ``peek ingest`` client's plain parts: finding files, batching, the manifest, retrying."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from infra.ingest_client import (
    IngestAborted,
    LocalFile,
    Manifest,
    batches,
    find_images,
    percentile,
    post_with_retry,
)


def test_find_images_walks_folders_once_each_in_path_order(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/deep/z.JPG", "a/b.png", "c.webp", "notes.txt", "a/deep/archive.zip"):
        (tmp_path / name).write_bytes(b"x")
    found = find_images([str(tmp_path), str(tmp_path / "c.webp")])
    assert [item.path.relative_to(tmp_path).as_posix() for item in found] == [
        "a/b.png",
        "a/deep/z.JPG",
        "c.webp",
    ]


def test_batches_bound_files_and_bytes() -> None:
    files = [LocalFile(Path(f"/f{i}"), size, 0) for i, size in enumerate([10, 10, 10, 50, 5])]
    assert [[item.path.name for item in group] for group in batches(files, 2, max_bytes=59)] == [
        ["f0", "f1"],
        ["f2"],
        ["f3", "f4"],
    ]


def test_manifest_survives_a_line_cut_short_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    first = Manifest(path)
    first.record("/photos/a.jpg", 7, 100, 5)
    first.record_cursor("s3://b/p/", "p/k9.jpg")
    first.close()
    with path.open("a") as handle:
        handle.write('{"file": "/photos/b.jp')  # a crash mid-write
    second = Manifest(path)
    second.record("/photos/c.jpg", 9, 1, 1)
    second.close()
    resumed = Manifest(path)
    resumed.close()
    assert resumed.ids == {"/photos/a.jpg": 7, "/photos/c.jpg": 9}
    assert resumed.cursors == {"s3://b/p/": "p/k9.jpg"}
    assert resumed.done(LocalFile(Path("/photos/a.jpg"), 100, 5))
    assert not resumed.done(LocalFile(Path("/photos/a.jpg"), 101, 5)), "a changed file is sent again"


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50.0, 99.0, 100.0)
    assert percentile([], 0.5) != percentile([], 0.5)  # nan


def test_post_retries_dropped_connections_and_503_then_succeeds() -> None:
    calls = []

    # Injected failures (a mock transport): a refused connection, then a 503, then the answer.
    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if len(calls) == 2:
            return httpx.Response(503, json={"error": "broker away"}, headers={"Retry-After": "0"})
        return httpx.Response(202, json={"ok": True})

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://peek") as http:
            return await post_with_retry(http, "/api/analyze/batch", retry_for_s=30, content=b"x")

    assert asyncio.run(run()).status_code == 202 and len(calls) == 3


def test_post_gives_up_after_its_retry_window() -> None:
    # Injected failure: the API never answers.
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url="http://peek") as http:
            await post_with_retry(http, "/api/analyze/batch", retry_for_s=1.5, content=b"x")

    with pytest.raises(IngestAborted, match="kept failing"):
        asyncio.run(run())
