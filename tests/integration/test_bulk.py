"""Bulk ingestion on the real pipeline: the batch route, deduplication, bucket ingestion, the
``peek ingest`` client (resume, a restarting API) and a stopped worker whose events wait in Kafka."""

from __future__ import annotations

import argparse
import io
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from PIL import Image

from infra.ingest_client import Manifest, find_images, run_ingest
from tests.conftest import wait_final
from tests.services import PeekProcesses


def unique_image(fmt: str = "JPEG", size: tuple[int, int] = (160, 120)) -> bytes:
    """A small image no other test uploads (so deduplication never joins two tests' images)."""
    blocks = np.random.default_rng(uuid.uuid4().int % 2**32).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blocks).resize(size, Image.Resampling.BILINEAR).save(buffer, fmt)
    return buffer.getvalue()


def rows_with_sha(database_url: str, data: bytes) -> list[tuple[int, str]]:
    import hashlib

    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT id, storage_key FROM images WHERE sha256 = %s ORDER BY id",
            (hashlib.sha256(data).hexdigest(),),
        ).fetchall()


def ingest_args(paths: list[str], api: str, manifest: Path, **overrides: object) -> argparse.Namespace:
    values = {
        "paths": paths,
        "api": api,
        "concurrency": 2,
        "batch_size": 3,
        "wait": True,
        "wait_timeout": 240.0,
        "manifest": str(manifest),
        "reanalyze": False,
        "retry_for": 180.0,
        "quiet": True,
    }
    return argparse.Namespace(**{**values, **overrides})


def test_batch_accepts_good_parts_and_refuses_bad_ones_in_order(
    client: httpx.Client, database_url: str
) -> None:
    good = [unique_image(), unique_image("PNG")]
    parts = [
        ("images", ("first.jpg", good[0], "image/jpeg")),
        ("images", ("notes.txt", b"hello", "text/plain")),
        ("images", ("empty.png", b"", "image/png")),
        ("images", ("second.png", good[1], "image/png")),
        ("images", ("fake.jpg", b"not an image at all", "image/jpeg")),
    ]
    response = client.post("/api/analyze/batch", files=parts)
    assert response.status_code == 202, response.text
    body = response.json()
    results = body["results"]
    assert (body["accepted"], body["refused"], len(results)) == (2, 3, 5)
    assert [entry.get("filename") for entry in results] == [
        "first.jpg",
        "notes.txt",
        "empty.png",
        "second.png",
        "fake.jpg",
    ]
    for index in (0, 3):
        assert results[index]["status"] == "processing" and isinstance(results[index]["id"], int)
    assert ".txt" in results[1]["error"] and "empty" in results[2]["error"]
    assert "not a usable image" in results[4]["error"]
    assert all(results[i]["status_code"] == 400 and "id" not in results[i] for i in (1, 2, 4))
    for index in (0, 3):
        assert wait_final(client, results[index]["id"], timeout_s=180)["status"] == "completed"
    assert [len(rows_with_sha(database_url, data)) for data in good] == [1, 1]


def test_batch_without_images_is_refused(client: httpx.Client) -> None:
    response = client.post("/api/analyze/batch", files={"image": ("a.jpg", unique_image())})
    assert response.status_code == 400 and "'images'" in response.json()["error"]


def test_seen_bytes_return_the_existing_id_and_rerun_nothing(client: httpx.Client, database_url: str) -> None:
    data = unique_image()
    first = client.post("/api/analyze", files={"image": ("one.jpg", data)}).json()
    done = wait_final(client, first["id"], timeout_s=180)
    with psycopg.connect(database_url) as connection:
        results_before = connection.execute(
            "SELECT count(*) FROM analysis_results WHERE image_id = %s", (first["id"],)
        ).fetchone()[0]

    again = client.post("/api/analyze", files={"image": ("renamed.jpg", data)})
    assert again.status_code == 202
    assert again.json()["id"] == first["id"] and again.json()["duplicate"] is True
    assert again.json()["status"] == "completed"
    in_batch = client.post(
        "/api/analyze/batch", files=[("images", ("x.jpg", data)), ("images", ("y.jpg", data))]
    )
    assert [entry["id"] for entry in in_batch.json()["results"]] == [first["id"], first["id"]]
    assert len(rows_with_sha(database_url, data)) == 1, "no second row, no second stored object"
    time.sleep(2)  # room for any (wrong) re-run to land
    with psycopg.connect(database_url) as connection:
        results_after = connection.execute(
            "SELECT count(*) FROM analysis_results WHERE image_id = %s", (first["id"],)
        ).fetchone()[0]
    assert results_after == results_before == 5
    assert client.get(f"/api/results/{first['id']}").json()["completed_at"] == done["completed_at"]

    rerun = client.post(
        "/api/analyze", params={"reanalyze": "true"}, files={"image": ("one.jpg", data)}
    ).json()
    assert rerun["id"] != first["id"] and "duplicate" not in rerun
    assert wait_final(client, rerun["id"], timeout_s=180)["status"] == "completed"
    assert [row[0] for row in rows_with_sha(database_url, data)] == [first["id"], rerun["id"]]


def test_concurrent_uploads_of_the_same_bytes_make_one_image(client: httpx.Client, database_url: str) -> None:
    data = unique_image()
    files = [("images", (f"copy{i}.jpg", data)) for i in range(3)]
    with httpx.Client(base_url=str(client.base_url), timeout=60) as other:
        answers: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda: answers.append(other.post("/api/analyze/batch", files=files)))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    ids = {entry["id"] for answer in answers for entry in answer.json()["results"]}
    assert len(ids) == 1 and len(rows_with_sha(database_url, data)) == 1


def test_bucket_ingestion_copies_server_side_page_by_page(
    client: httpx.Client, s3, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    bucket = f"archive-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    images = {f"scans/2019/p{i}.jpg": unique_image() for i in range(3)}
    images["scans/2020/p3.png"] = unique_image("PNG")
    for key, data in images.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    s3.put_object(Bucket=bucket, Key="scans/readme.txt", Body=b"not an image")
    s3.put_object(Bucket=bucket, Key="other/outside.jpg", Body=unique_image())

    entries, start_after, pages = [], None, 0
    while True:
        page = client.post(
            "/api/ingest/bucket",
            json={"source": f"s3://{bucket}/scans/", "start_after": start_after, "limit": 2},
        )
        assert page.status_code == 202, page.text
        entries += page.json()["results"]
        pages += 1
        start_after = page.json()["next_start_after"]
        if start_after is None:
            break
    assert pages == 3
    by_key = {entry["key"]: entry for entry in entries}
    assert set(by_key) == {*images, "scans/readme.txt"}
    assert "not an image" in by_key["scans/readme.txt"]["error"]
    for key, data in images.items():
        result = wait_final(client, by_key[key]["id"], timeout_s=180)
        assert result["status"] == "completed"
        [(image_id, storage_key)] = rows_with_sha(database_url, data)
        assert image_id == by_key[key]["id"] and storage_key.startswith("originals/")
        assert s3.get_object(Bucket="peek-test", Key=storage_key)["Body"].read() == data
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data, "the source is left as it was"

    again = client.post("/api/ingest/bucket", json={"source": f"s3://{bucket}/scans/2019/"}).json()
    assert all(entry["duplicate"] for entry in again["results"]) and again["next_start_after"] is None
    missing = client.post("/api/ingest/bucket", json={"source": "s3://no-such-bucket-here/x"})
    assert missing.status_code == 404 and "no-such-bucket-here" in missing.json()["error"]


def test_peek_ingest_of_a_bucket_prefix(pipeline: PeekProcesses, s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket = f"photos-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"2021/{i}.jpg", Body=unique_image())
    manifest = tmp_path / "manifest.jsonl"
    assert run_ingest(ingest_args([f"s3://{bucket}/2021/"], pipeline.url, manifest)) == 0
    recorded = Manifest(manifest)
    recorded.close()
    assert set(recorded.ids) == {f"s3://{bucket}/2021/{i}.jpg" for i in range(3)}
    assert recorded.cursors == {f"s3://{bucket}/2021/": None}


def test_peek_ingest_resumes_from_its_manifest(
    pipeline: PeekProcesses, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i in range(4):
        (folder / ("nested" if i % 2 else "") / f"img{i}.jpg").write_bytes(unique_image())
    (folder / "notes.txt").write_text("skipped: not an image name")
    manifest = tmp_path / "manifest.jsonl"

    assert run_ingest(ingest_args([str(folder)], pipeline.url, manifest)) == 0
    first = capsys.readouterr().out
    assert "images: 4 (4 uploaded, 0 already in the manifest, 0 refused)" in first
    assert "4 completed, 0 failed, 0 unfinished" in first and "p99" in first
    ids_before = Manifest(manifest).ids

    # A crash can leave half a line at the end; two new files arrive before the second run.
    with manifest.open("a") as handle:
        handle.write('{"file": "/half-writ')
    for i in range(4, 6):
        (folder / f"img{i}.png").write_bytes(unique_image("PNG"))
    assert run_ingest(ingest_args([str(folder)], pipeline.url, manifest)) == 0
    second = capsys.readouterr().out
    assert "images: 6 (2 uploaded, 4 already in the manifest, 0 refused)" in second
    assert "6 completed, 0 failed" in second
    resumed = Manifest(manifest)
    resumed.close()
    assert {name: resumed.ids[name] for name in ids_before} == ids_before
    assert set(resumed.ids) == {item.name for item in find_images([str(folder)])}


def test_peek_ingest_waits_out_a_restarting_api(
    pipeline: PeekProcesses, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"img{i}.jpg").write_bytes(unique_image())
    pipeline.stop("api")
    try:
        outcome: list[int] = []
        runner = threading.Thread(
            target=lambda: outcome.append(
                run_ingest(ingest_args([str(folder)], pipeline.url, tmp_path / "m.jsonl"))
            )
        )
        runner.start()
        time.sleep(4)  # the client meets a refused connection and keeps retrying
        assert runner.is_alive() and not outcome
    finally:
        pipeline.start_api()
    runner.join(300)
    printed = capsys.readouterr()
    assert outcome == [0], printed
    assert "images: 3 (3 uploaded" in printed.out


def test_uploads_wait_in_kafka_for_a_stopped_worker(
    pipeline: PeekProcesses, client: httpx.Client, database_url: str
) -> None:
    pipeline.stop("worker-text")
    try:
        files = [("images", (f"w{i}.jpg", unique_image())) for i in range(4)]
        response = client.post("/api/analyze/batch", files=files)
        assert response.status_code == 202 and response.json()["accepted"] == 4
        ids = [entry["id"] for entry in response.json()["results"]]
        # The other four analyzers report; the image waits for text.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with psycopg.connect(database_url) as connection:
                reported = connection.execute(
                    "SELECT count(*) FROM analysis_results WHERE image_id = ANY(%s)", (ids,)
                ).fetchone()[0]
            if reported == 4 * len(ids):
                break
            time.sleep(0.5)
        assert reported == 4 * len(ids)
        time.sleep(2)
        # Read from this session's database: the Redis result cache may be shared with other test runs.
        with psycopg.connect(database_url) as connection:
            statuses = connection.execute("SELECT status FROM images WHERE id = ANY(%s)", (ids,)).fetchall()
        assert statuses == [("processing",)] * len(ids)
    finally:
        pipeline.start_workers(["text"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as connection:
            statuses = connection.execute("SELECT status FROM images WHERE id = ANY(%s)", (ids,)).fetchall()
        if all(status != "processing" for (status,) in statuses):
            break
        time.sleep(0.5)
    assert statuses == [("completed",)] * len(ids)
    with psycopg.connect(database_url) as connection:
        counts = connection.execute(
            "SELECT count(*) FROM analysis_results WHERE image_id = ANY(%s) GROUP BY image_id", (ids,)
        ).fetchall()
        text_ok = connection.execute(
            "SELECT count(*) FROM analysis_results WHERE image_id = ANY(%s) AND analyzer = 'text' AND status = 'ok'",
            (ids,),
        ).fetchone()[0]
    assert [count for (count,) in counts] == [5] * len(ids), "nothing lost, nothing doubled"
    assert text_ok == len(ids)


def test_the_same_new_bytes_sent_at_once_become_one_image(client: httpx.Client, database_url: str) -> None:
    data = unique_image()
    batch = client.post("/api/analyze/batch", files=[("images", (f"{i}.jpg", data)) for i in range(4)])
    batch_ids = {entry["id"] for entry in batch.json()["results"]}
    other = unique_image()
    ids: list[int] = []

    def upload() -> None:
        response = httpx.post(
            f"{client.base_url}/api/analyze", files={"image": ("same.jpg", other)}, timeout=60
        )
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(batch_ids) == 1 and len(set(ids)) == 1 and len(ids) == 6
    assert len(rows_with_sha(database_url, data)) == 1 and len(rows_with_sha(database_url, other)) == 1
    assert wait_final(client, ids[0], timeout_s=180)["status"] == "completed"
