"""The REST contract of the earlier Peek API: every route, status code and JSON shape, on real services.

Every refused upload must leave nothing behind: no row, no stored object, no event.
"""

from __future__ import annotations

import io

import boto3
import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from PIL import Image

from sink.models import PROCESSING


def png_bytes(size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


class Footprint:
    """What an upload can leave behind: rows, stored objects, and events on image.uploaded."""

    def __init__(self, database_url: str, s3_endpoint: str, kafka_bootstrap: str) -> None:
        self.database_url = database_url
        self.s3 = boto3.client(
            "s3",
            endpoint_url=s3_endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        self.consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "footprint-probe"})

    def snapshot(self) -> tuple[int, int, int]:
        with psycopg.connect(self.database_url) as connection:
            rows = connection.execute("SELECT count(*) FROM images").fetchone()[0]
        objects = self.s3.list_objects_v2(Bucket="peek-test").get("KeyCount", 0)
        metadata = self.consumer.list_topics("image.uploaded", timeout=10).topics["image.uploaded"]
        events = sum(
            self.consumer.get_watermark_offsets(TopicPartition("image.uploaded", p), timeout=10)[1]
            for p in metadata.partitions
        )
        return rows, objects, events


@pytest.fixture(scope="module")
def footprint(pipeline, database_url, s3_endpoint, kafka_bootstrap):
    probe = Footprint(database_url, s3_endpoint, kafka_bootstrap)
    yield probe
    probe.consumer.close()


REFUSALS = [
    pytest.param(
        {"files": {"photo": ("a.png", png_bytes(), "image/png")}}, 400, "field 'image'", id="missing-field"
    ),
    pytest.param(
        {"data": {"image": "not a file"}, "files": {"other": ("x", b"x")}},
        400,
        "must be a file",
        id="text-instead-of-file",
    ),
    pytest.param(
        {"content": b'{"image": 1}', "headers": {"content-type": "application/json"}},
        400,
        "multipart/form-data",
        id="not-multipart",
    ),
    pytest.param({"files": {"image": ("empty.png", b"", "image/png")}}, 400, "empty", id="empty-file"),
    pytest.param(
        {"files": {"image": ("notes.txt", b"hello world", "text/plain")}}, 400, ".txt", id="wrong-extension"
    ),
    pytest.param(
        {"files": {"image": ("fake.png", b"hello world, not an image", "image/png")}},
        400,
        "not a usable image",
        id="text-named-png",
    ),
    pytest.param(
        {"files": {"image": ("cut.png", png_bytes((64, 64))[:60], "image/png")}},
        400,
        "not a usable image",
        id="truncated-png",
    ),
    pytest.param(
        {"files": {"image": ("big.jpg", b"\xff\xd8\xff" + b"0" * (16 * 1024 * 1024), "image/jpeg")}},
        413,
        "16 MB",
        id="oversized",
    ),
    pytest.param(
        {"files": {"image": ("doc.pdf", b"%PDF-1.4 fake", "application/pdf")}}, 400, "not allowed", id="pdf"
    ),
]


@pytest.mark.parametrize(("request_kwargs", "status", "message"), REFUSALS)
def test_bad_uploads_are_refused_with_a_reason_and_leave_nothing(
    client: httpx.Client, footprint: Footprint, request_kwargs, status, message
) -> None:
    before = footprint.snapshot()
    response = client.post("/api/analyze", **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and message in body["error"]
    assert "Traceback" not in response.text
    assert footprint.snapshot() == before


def test_accepted_upload_answers_202_with_id_and_url(client: httpx.Client, footprint: Footprint) -> None:
    before = footprint.snapshot()
    response = client.post("/api/analyze", files={"image": ("../../etc/passwd.png", png_bytes((40, 41)))})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "processing" and isinstance(body["id"], int)
    assert body["public_url"].endswith(f"/api/image/{body['id']}/original")
    rows, objects, events = footprint.snapshot()
    assert (rows, objects, events) == (before[0] + 1, before[1] + 1, before[2] + 1)
    with psycopg.connect(footprint.database_url) as connection:
        name, key = connection.execute(
            "SELECT original_filename, storage_key FROM images WHERE id = %s", (body["id"],)
        ).fetchone()
    assert name == "passwd.png" and key.startswith("originals/") and "passwd" not in key


def test_results_statuses(client: httpx.Client, database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        image_id = connection.execute(
            "INSERT INTO images (storage_key, content_type, size_bytes, width, height, sha256, status,"
            " expected_analyzers, emit_attempts, created_at, updated_at) VALUES"
            " ('originals/none.png', 'image/png', 1, 1, 1, 'contract-test', %s, '[\"colors\"]', 0, now(), now())"
            " RETURNING id",
            (PROCESSING,),
        ).fetchone()[0]
    processing = client.get(f"/api/results/{image_id}")
    assert processing.status_code == 202 and processing.json() == {"id": image_id, "status": "processing"}
    missing = client.get("/api/results/987654321")
    assert missing.status_code == 404 and "987654321" in missing.json()["error"]
    assert client.get("/api/results/not-a-number").status_code == 400


@pytest.mark.parametrize("route", ["original", "annotated", "url"])
def test_image_routes_404_for_unknown_ids(client: httpx.Client, route: str) -> None:
    response = client.get(f"/api/image/987654321/{route}")
    assert response.status_code == 404 and "error" in response.json()


@pytest.mark.parametrize("expiration", [0, 59, 604801, -5])
def test_url_expiration_bounds(client: httpx.Client, expiration: int) -> None:
    image_id = client.post("/api/analyze", files={"image": ("e.png", png_bytes((33, 35)))}).json()["id"]
    response = client.get(f"/api/image/{image_id}/url", params={"expiration": expiration})
    assert response.status_code == 400 and "expiration" in response.json()["error"]
    ok = client.get(f"/api/image/{image_id}/url", params={"expiration": 604800})
    assert ok.status_code == 200 and ok.json()["expires_in"] == 604800


def test_health_reports_every_dependency(client: httpx.Client) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert {body[name] for name in ("database", "redis", "kafka", "storage")} == {"connected"}


def test_unknown_route_and_method_answer_json(client: httpx.Client) -> None:
    assert client.get("/api/nothing-here").json() == {"error": "no such route"}
    assert client.delete("/api/analyze").status_code == 405
