"""Peek's events as an outside service sees them, and per-upload webhooks.

The consumers here are plain confluent-kafka (no Peek code); the schemas they validate against are
fetched from the API, as a subscriber would.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jsonschema
import pytest
from confluent_kafka import Consumer
from PIL import Image as PILImage

from sink.webhooks import SIGNATURE_HEADER, verify
from tests.conftest import WEBHOOK_SECRET, wait_final
from tests.services import REPO, wait_for

TOPICS = ["image.uploaded", "image.analysis.partial", "image.analysis.completed"]
CE_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time")


def unique_png() -> bytes:
    """A small picture no other test uploads (so content deduplication never answers for it)."""
    rng = random.Random(uuid.uuid4().int)
    picture = PILImage.new("RGB", (240, 180), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(4):
        x, y = rng.randrange(200), rng.randrange(140)
        picture.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 40, y + 40))
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def upload(client: httpx.Client, **form: str) -> int:
    response = client.post("/api/analyze", files={"image": ("pic.png", unique_png(), "image/png")}, data=form)
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def outside_consumer(bootstrap: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"outsider-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(TOPICS)
    return consumer


def test_outside_consumer_validates_every_event_against_the_published_schema(
    client: httpx.Client, kafka_bootstrap: str
) -> None:
    index = client.get("/api/schemas").json()
    schemas = {topic: client.get(path).json() for topic, path in index["events"].items()}
    assert set(schemas) == set(TOPICS)
    asyncapi = client.get("/api/asyncapi.yaml")
    assert asyncapi.status_code == 200 and asyncapi.text.startswith("asyncapi: 3.0.0")

    consumer = outside_consumer(kafka_bootstrap)
    try:
        image_id = upload(client)
        result = wait_final(client, image_id)
        seen: dict[str, list[dict[str, Any]]] = {topic: [] for topic in TOPICS}
        validated = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not seen["image.analysis.completed"]:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            topic = message.topic()
            event = json.loads(message.value())
            jsonschema.validate(event, schemas[topic])  # every event on the topic, not only ours
            headers = {key: value.decode() for key, value in message.headers() or []}
            assert all(name in headers for name in CE_REQUIRED), headers
            assert headers["ce_specversion"] == "1.0"
            assert headers["ce_type"] == f"io.peek.{topic}"
            assert headers["ce_subject"] == message.key().decode()
            validated += 1
            if message.key() == str(image_id).encode():
                seen[topic].append(event)
    finally:
        consumer.close()
    assert seen["image.uploaded"] and seen["image.uploaded"][0]["id"] == image_id
    assert {partial["analyzer"] for partial in seen["image.analysis.partial"]} == set(result["analyzers"])
    completed = seen["image.analysis.completed"][0]
    assert completed["schema_version"] == 1
    # The event is the REST result, plus schema_version.
    for field, value in result.items():
        assert completed[field] == value, field
    assert validated >= 7


def test_the_example_subscriber_receives_completions(client: httpx.Client, kafka_bootstrap: str) -> None:
    image_id = upload(client)
    wait_final(client, image_id)
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "examples" / "subscriber.py"),
            "--bootstrap",
            kafka_bootstrap,
            "--group",
            f"example-{uuid.uuid4().hex}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[dict[str, Any]] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line["id"] == image_id for line in lines), 60, "the example subscriber")
    finally:
        process.terminate()
        process.wait(10)
    ours = next(line for line in lines if line["id"] == image_id)
    assert ours["status"] == "completed" and ours["ce_type"] == "io.peek.image.analysis.completed"


# --- webhooks -----------------------------------------------------------------------------------


class Receiver:
    """A real HTTP endpoint that answers webhooks according to a script of (delay, status)."""

    def __init__(self, script: list[tuple[float, int]]) -> None:
        self.script = script
        self.calls: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                step = receiver.script[min(len(receiver.calls), len(receiver.script) - 1)]
                receiver.calls.append((dict(self.headers), body, step[1]))
                time.sleep(step[0])
                try:
                    self.send_response(step[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *_args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def delivered(self) -> list[tuple[dict[str, str], bytes, int]]:
        return [call for call in self.calls if call[2] == 200]


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.server.shutdown()


def test_webhook_is_retried_until_a_failing_receiver_recovers_and_is_signed(
    client: httpx.Client, receivers: list[Receiver]
) -> None:
    flaky = Receiver([(0, 500), (0, 503), (0, 200)])
    receivers.append(flaky)
    image_id = upload(client, callback_url=flaky.url)
    result = wait_final(client, image_id)
    wait_for(lambda: flaky.delivered(), 60, "the webhook to be delivered")
    assert len(flaky.calls) == 3
    headers, body, _ = flaky.delivered()[0]
    assert verify(WEBHOOK_SECRET, headers[SIGNATURE_HEADER], body)
    assert not verify("another-secret", headers[SIGNATURE_HEADER], body)
    assert headers["X-Peek-Attempt"] == "3" and headers["ce-type"] == "io.peek.image.analysis.completed"
    event = json.loads(body)
    assert event["schema_version"] == 1
    for field, value in result.items():
        assert event[field] == value, field


def test_slow_and_dead_receivers_never_block_the_pipeline(
    client: httpx.Client, receivers: list[Receiver]
) -> None:
    # The slow receiver answers after 30 s the first time: longer than the sender waits (2 s), so
    # only the retry's 200 can count.
    slow = Receiver([(30, 500), (0, 200)])
    dead = Receiver([(0, 503)])
    receivers.extend([slow, dead])
    slow_id = upload(client, callback_url=slow.url)
    dead_id = upload(client, callback_url=dead.url)
    plain_ids = [upload(client) for _ in range(2)]
    for image_id in [slow_id, dead_id, *plain_ids]:
        assert wait_final(client, image_id)["status"] == "completed"
    wait_for(lambda: slow.delivered(), 60, "the slow receiver's retry to be delivered")
    assert len(slow.calls) >= 2
    wait_for(lambda: len(dead.calls) >= 5, 60, "every attempt at the dead receiver")
    time.sleep(2)
    assert len(dead.calls) == 5  # PEEK_WEBHOOK_MAX_ATTEMPTS, then it gives up


def test_a_bad_callback_url_is_refused_at_the_door(client: httpx.Client) -> None:
    for bad in ("ftp://example.com/x", "not a url", "http://user:pw@example.com/", "http://" + "a" * 3000):
        response = client.post(
            "/api/analyze",
            files={"image": ("pic.png", unique_png(), "image/png")},
            data={"callback_url": bad},
        )
        assert response.status_code == 400, (bad, response.text)
        assert "callback_url" in response.json()["error"]
