"""Result lookup at scale: batch reads, the cursor listing, ETag/304, long-poll, /metrics.

Rows for the listing are written straight into PostgreSQL (as the sink would leave them) so that a
thousand results exist without analysing a thousand images.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from infra.kafka import EventProducer
from schemas.events import AnalysisPartial
from schemas.topics import ANALYSIS_PARTIAL
from tests.services import wait_for

ROWS = 1000


def insert_images(database_url: str, rows: list[dict[str, Any]]) -> list[int]:
    """Insert image rows; returns their ids in order."""
    ids = []
    with psycopg.connect(database_url) as connection:
        for row in rows:
            values = {
                "storage_key": f"originals/test/{uuid.uuid4().hex}.png",
                "content_type": "image/png",
                "size_bytes": 100,
                "width": 10,
                "height": 10,
                "sha256": uuid.uuid4().hex,
                "expected_analyzers": json.dumps(["colors"]),
                "emit_attempts": 0,
                "updated_at": datetime.now(UTC),
                **row,
            }
            columns = ", ".join(values)
            marks = ", ".join(["%s"] * len(values))
            ids.append(
                connection.execute(
                    f"INSERT INTO images ({columns}) VALUES ({marks}) RETURNING id", list(values.values())
                ).fetchone()[0]
            )
    return ids


def completed_row(scene: str, created_at: datetime, faces: int, text: bool) -> dict[str, Any]:
    insights = {"scene_type": scene, "faces_detected": faces, "text_found": text, "brightness": 100.0}
    return {
        "status": "completed",
        "insights": json.dumps(insights),
        "scene_type": scene,
        "faces_detected": faces,
        "text_found": text,
        "created_at": created_at,
        "completed_at": created_at,
    }


@pytest.fixture(scope="module")
def thousand(database_url: str, client: httpx.Client) -> tuple[str, list[int], dict[int, dict[str, Any]]]:
    """1,000 completed rows of one scene_type; groups of 7 share a created_at (ties by id)."""
    scene = f"t{uuid.uuid4().hex[:12]}"
    start = datetime.now(UTC) - timedelta(days=1)
    rows = [completed_row(scene, start + timedelta(seconds=i // 7), i % 3, i % 2 == 0) for i in range(ROWS)]
    ids = insert_images(database_url, rows)
    return scene, ids, dict(zip(ids, rows, strict=True))


def page_through(client: httpx.Client, limit: int, **filters: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**filters, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/results", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        seen += body["results"]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
        assert len(body["results"]) == limit


def test_cursor_pages_through_a_thousand_results_without_gaps_or_repeats(
    client: httpx.Client, thousand
) -> None:
    scene, ids, rows = thousand
    seen = page_through(client, 97, scene_type=scene)
    seen_ids = [result["id"] for result in seen]
    assert len(seen_ids) == ROWS and len(set(seen_ids)) == ROWS
    assert set(seen_ids) == set(ids)
    # Newest first, ties by id, descending.
    order = [(rows[i]["created_at"], i) for i in seen_ids]
    assert order == sorted(order, reverse=True)
    assert all(
        result["status"] == "completed" and result["insights"]["scene_type"] == scene for result in seen
    )


def test_listing_filters(client: httpx.Client, thousand) -> None:
    scene, ids, rows = thousand
    with_faces = {result["id"] for result in page_through(client, 500, scene_type=scene, has_faces="true")}
    assert with_faces == {i for i in ids if rows[i]["faces_detected"] > 0}
    no_text = {result["id"] for result in page_through(client, 500, scene_type=scene, text_found="false")}
    assert no_text == {i for i in ids if not rows[i]["text_found"]}
    since = rows[ids[-10]]["created_at"]
    recent = {result["id"] for result in page_through(client, 5, scene_type=scene, since=since.isoformat())}
    assert recent == {i for i in ids if rows[i]["created_at"] >= since} and len(recent) >= 10
    processing = page_through(client, 50, scene_type=scene, status="processing")
    assert processing == []
    for bad in (
        {"status": "done"},
        {"limit": 0},
        {"limit": 501},
        {"cursor": "nonsense"},
        {"has_faces": "maybe"},
    ):
        response = client.get("/api/results", params=bad)
        assert response.status_code == 400 and response.json()["error"], bad


def test_batch_read_keeps_order_and_reports_missing(
    client: httpx.Client, thousand, database_url: str
) -> None:
    _, ids, _ = thousand
    [processing_id] = insert_images(database_url, [{"status": "processing", "created_at": datetime.now(UTC)}])
    missing = 10**12
    wanted = [ids[5], missing, processing_id, ids[0], ids[5]]
    body = client.get("/api/results", params={"ids": ",".join(map(str, wanted))}).json()
    assert [result["id"] for result in body["results"]] == [ids[5], processing_id, ids[0]]
    assert body["results"][1] == {"id": processing_id, "status": "processing"}
    assert body["not_found"] == [missing]
    # The same results as the single-result route gives.
    assert body["results"][0] == client.get(f"/api/results/{ids[5]}").json()
    hundred = client.get("/api/results", params={"ids": ",".join(map(str, ids[:100]))}).json()
    assert [result["id"] for result in hundred["results"]] == ids[:100]
    for bad in (",".join(str(i) for i in range(1, 502)), "1,x", "", "1,2&status=completed"):
        response = client.get(f"/api/results?ids={bad}")
        assert response.status_code == 400 and response.json()["error"], bad


def test_etag_and_304_for_final_results_and_no_caching_while_processing(
    client: httpx.Client, thousand, database_url: str
) -> None:
    _, ids, _ = thousand
    first = client.get(f"/api/results/{ids[1]}")
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert "immutable" in first.headers["cache-control"] and "max-age" in first.headers["cache-control"]
    again = client.get(f"/api/results/{ids[1]}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    other = client.get(f"/api/results/{ids[1]}", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.json() == first.json()
    [processing_id] = insert_images(database_url, [{"status": "processing", "created_at": datetime.now(UTC)}])
    pending = client.get(f"/api/results/{processing_id}")
    assert pending.status_code == 202 and pending.headers["cache-control"] == "no-store"
    assert "etag" not in pending.headers
    # A processing result is never served stale: once the row is final, the next read shows it.
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "UPDATE images SET status = 'failed', error = 'test', completed_at = now() WHERE id = %s",
            (processing_id,),
        )
    assert client.get(f"/api/results/{processing_id}").json()["status"] == "failed"


def test_long_poll_wakes_when_the_sink_completes_the_image(
    client: httpx.Client, database_url: str, kafka_bootstrap: str
) -> None:
    [image_id] = insert_images(database_url, [{"status": "processing", "created_at": datetime.now(UTC)}])
    answer: dict[str, Any] = {}

    def long_poll() -> None:
        started = time.monotonic()
        response = client.get(f"/api/results/{image_id}", params={"wait": 30}, timeout=60)
        answer.update(response=response, elapsed=time.monotonic() - started)

    waiter = threading.Thread(target=long_poll)
    waiter.start()
    wait_for(lambda: "peek_long_polls_waiting 1.0" in client.get("/metrics").text, 20, "the request to wait")
    # The partial a colors worker would send: the real sink completes the image and announces it.
    producer = EventProducer(kafka_bootstrap)
    partial = AnalysisPartial(
        image_id=image_id, analyzer="colors", analyzer_version="test", status="ok", result={"brightness": 1.0}
    )
    producer.send_sync(ANALYSIS_PARTIAL, str(image_id), partial.to_bytes())
    producer.close()
    waiter.join(60)
    response = answer["response"]
    assert response.status_code == 200 and response.json()["status"] == "completed"
    # Woken by the completion notice, well before the 30 s deadline.
    assert answer["elapsed"] < 25, answer["elapsed"]


def test_long_poll_bounds(client: httpx.Client, database_url: str) -> None:
    [image_id] = insert_images(database_url, [{"status": "processing", "created_at": datetime.now(UTC)}])
    response = client.get(f"/api/results/{image_id}", params={"wait": 1})
    assert response.status_code == 202
    for bad in ("31", "-1", "soon"):
        response = client.get(f"/api/results/{image_id}", params={"wait": bad})
        assert response.status_code == 400 and "wait" in response.json()["error"]
    assert client.get("/api/results/999999999", params={"wait": 1}).status_code == 404


def test_metrics_endpoint(client: httpx.Client, thousand) -> None:
    _, ids, _ = thousand
    client.get(f"/api/results/{ids[2]}")
    client.get(f"/api/results/{ids[2]}")
    text = client.get("/metrics").text
    assert 'peek_http_requests_total{method="GET",route="/api/results/{image_id}",status="200"}' in text
    assert (
        'peek_http_request_duration_seconds_bucket{le="0.01",method="GET",route="/api/results/{image_id}"}'
        in text
    )
    assert 'peek_result_cache_lookups_total{layer="local",outcome="hit"}' in text
    assert "peek_result_cache_hit_ratio " in text
    for group in ("peek-colors", "peek-quality", "peek-faces", "peek-text", "peek-scene", "peek-sink"):
        assert f'peek_consumer_lag{{group="{group}"' in text, group
