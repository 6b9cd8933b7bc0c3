"""Upload to completed result on real PostgreSQL, Redis, S3 (moto server) and a Kafka-protocol broker."""

from __future__ import annotations

import io
import json
import uuid

import httpx
import numpy as np
import psycopg
import redis
from confluent_kafka import Consumer
from PIL import Image

from tests.conftest import wait_final
from tests.ingest_api.test_rest_contract import png_bytes

CONTRACT_FIELDS = {
    "dominant_colors",
    "brightness",
    "faces_detected",
    "face_locations",
    "text_found",
    "extracted_text",
    "word_count",
    "sharpness_score",
    "blur_level",
    "contrast_score",
    "quality_score",
    "scene_type",
    "scene_confidence",
}


def test_upload_completes_on_postgres_redis_s3(
    client: httpx.Client, corpus, pipeline_env, database_url, redis_url, s3
) -> None:
    data = (corpus / "basketball2.png").read_bytes()
    response = client.post("/api/analyze", files={"image": ("basketball2.png", data, "image/png")})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "processing" and isinstance(body["id"], int) and body["public_url"]

    result = wait_final(client, body["id"])
    assert result["status"] == "completed"
    insights = result["insights"]
    assert set(insights) >= CONTRACT_FIELDS
    assert insights["faces_detected"] == 1 and len(insights["face_locations"]) == 1
    assert all(set(box) >= {"x", "y", "width", "height"} for box in insights["face_locations"])
    assert all(color.startswith("#") and len(color) == 7 for color in insights["dominant_colors"])
    assert 0 <= insights["brightness"] <= 255 and 0 <= insights["quality_score"] <= 100
    assert insights["blur_level"] in ("low", "medium", "high")
    assert 0 <= insights["scene_confidence"] <= 1
    assert set(result["analyzers"]) == {"colors", "quality", "faces", "text", "scene"}

    # The row in PostgreSQL, the cached copy in Redis, the original in S3; no annotated copy yet.
    with psycopg.connect(database_url) as connection:
        status, key, annotated_key = connection.execute(
            "SELECT status, storage_key, annotated_key FROM images WHERE id = %s", (body["id"],)
        ).fetchone()
        count = connection.execute(
            "SELECT count(*) FROM analysis_results WHERE image_id = %s", (body["id"],)
        ).fetchone()[0]
    assert status == "completed" and count == 5
    cached = redis.Redis.from_url(redis_url).get(
        f"{pipeline_env['PEEK_REDIS_NAMESPACE']}:result:{body['id']}"
    )
    assert cached is not None and json.loads(cached)["insights"] == insights
    assert s3.get_object(Bucket="peek-test", Key=key)["Body"].read() == data
    assert annotated_key is None

    # The annotated copy is drawn on its first request, then kept in S3 and recorded on the row.
    annotated = client.get(f"/api/image/{body['id']}/annotated")
    assert annotated.status_code == 200 and annotated.headers["content-type"] == "image/jpeg"
    assert annotated.headers["x-peek-annotated"] == "true"
    assert_face_boxed(annotated.content, insights["face_locations"][0])
    annotated_key = annotated_key_of(database_url, body["id"])
    assert annotated_key == key.replace("originals/", "annotated/").rsplit(".", 1)[0] + ".jpg"
    kept = s3.get_object(Bucket="peek-test", Key=annotated_key)["Body"].read()
    assert kept == annotated.content
    assert client.get(f"/api/image/{body['id']}/annotated").content == kept
    original = client.get(f"/api/image/{body['id']}/original")
    assert original.status_code == 200 and original.content == data
    assert original.headers["content-type"] == "image/png"
    url = client.get(f"/api/image/{body['id']}/url", params={"expiration": 120}).json()
    assert url["image_id"] == body["id"] and url["expires_in"] == 120
    assert httpx.get(url["url"]).content == data  # a real presigned URL on the S3 endpoint


def annotated_key_of(database_url: str, image_id: int) -> str | None:
    with psycopg.connect(database_url) as connection:
        return connection.execute("SELECT annotated_key FROM images WHERE id = %s", (image_id,)).fetchone()[0]


def assert_face_boxed(jpeg: bytes, face: dict) -> None:
    """The face's box is drawn in green on the copy, at the face's place in the original's pixels."""
    picture = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    top, left = face["y"], face["x"]
    edge = picture[top, left : left + face["width"]]  # the box's top side
    red, green, blue = edge.mean(axis=0)
    assert green > 150 and red < 90 and blue < 90, (red, green, blue)


def test_annotated_copy_without_findings_is_the_original(client: httpx.Client) -> None:
    data = png_bytes((48, 40))
    image_id = client.post("/api/analyze", files={"image": ("plain.png", data, "image/png")}).json()["id"]
    result = wait_final(client, image_id)
    assert result["insights"]["faces_detected"] == 0 and not result["insights"]["text_found"]
    response = client.get(f"/api/image/{image_id}/annotated")
    assert response.status_code == 200 and response.headers["x-peek-annotated"] == "false"
    assert response.headers["content-type"] == "image/png" and response.content == data


def test_annotated_copy_removed_from_the_bucket_is_drawn_again(
    client: httpx.Client, corpus, database_url, s3
) -> None:
    data = (corpus / "basketball2.png").read_bytes()
    image_id = client.post(
        "/api/analyze", files={"image": ("b.png", data, "image/png")}, params={"reanalyze": "true"}
    ).json()["id"]
    face = wait_final(client, image_id)["insights"]["face_locations"][0]
    first = client.get(f"/api/image/{image_id}/annotated").content
    annotated_key = annotated_key_of(database_url, image_id)
    s3.delete_object(Bucket="peek-test", Key=annotated_key)
    again = client.get(f"/api/image/{image_id}/annotated")
    assert again.status_code == 200 and again.headers["x-peek-annotated"] == "true"
    assert again.content == first
    assert_face_boxed(again.content, face)
    assert s3.get_object(Bucket="peek-test", Key=annotated_key)["Body"].read() == first


def test_annotated_copy_of_an_original_spoiled_in_the_bucket_is_the_original(
    client: httpx.Client, corpus, database_url, s3
) -> None:
    """Failure injected by rewriting the stored original after analysis: the copy cannot be drawn,
    so the route answers what is stored, marked not annotated, instead of an error."""
    data = (corpus / "basketball2.png").read_bytes()
    image_id = client.post(
        "/api/analyze", files={"image": ("b.png", data, "image/png")}, params={"reanalyze": "true"}
    ).json()["id"]
    assert wait_final(client, image_id)["insights"]["faces_detected"] == 1
    with psycopg.connect(database_url) as connection:
        (key,) = connection.execute("SELECT storage_key FROM images WHERE id = %s", (image_id,)).fetchone()
    s3.put_object(Bucket="peek-test", Key=key, Body=data[: len(data) // 3])
    response = client.get(f"/api/image/{image_id}/annotated")
    assert response.status_code == 200 and response.headers["x-peek-annotated"] == "false"
    assert response.content == data[: len(data) // 3]


def test_completed_event_reaches_a_plain_kafka_consumer(
    client: httpx.Client, corpus, kafka_bootstrap
) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"outsider-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe(["image.analysis.completed"])
    try:
        image_id = client.post(
            "/api/analyze", files={"image": ("apple.jpg", (corpus / "apple.jpg").read_bytes())}
        ).json()["id"]
        result = wait_final(client, image_id)
        seen = None
        for _ in range(120):
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            if message.key() == str(image_id).encode():
                seen = json.loads(message.value())
                break
        assert seen is not None, "no image.analysis.completed event for the upload"
        assert seen["schema_version"] == 1
        for field in ("id", "status", "insights", "analyzers"):
            assert seen[field] == result[field]
    finally:
        consumer.close()
