"""Upload to completed result on real PostgreSQL, Redis, S3 (moto server) and a Kafka-protocol broker."""

from __future__ import annotations

import json
import uuid

import boto3
import httpx
import psycopg
import redis
from confluent_kafka import Consumer

from tests.conftest import wait_final

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
    client: httpx.Client, corpus, pipeline_env, database_url, redis_url, s3_endpoint
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

    # The row in PostgreSQL, the cached copy in Redis, the original and the annotated copy in S3.
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
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    assert s3.get_object(Bucket="peek-test", Key=key)["Body"].read() == data
    assert annotated_key and s3.head_object(Bucket="peek-test", Key=annotated_key)["ContentLength"] > 0

    annotated = client.get(f"/api/image/{body['id']}/annotated")
    assert annotated.status_code == 200 and annotated.headers["content-type"] == "image/jpeg"
    assert annotated.content[:2] == b"\xff\xd8"
    original = client.get(f"/api/image/{body['id']}/original")
    assert original.status_code == 200 and original.content == data
    assert original.headers["content-type"] == "image/png"
    url = client.get(f"/api/image/{body['id']}/url", params={"expiration": 120}).json()
    assert url["image_id"] == body["id"] and url["expires_in"] == 120
    assert httpx.get(url["url"]).content == data  # a real presigned URL on the S3 endpoint


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
