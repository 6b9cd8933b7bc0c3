"""Faults, for real: the broker, PostgreSQL, Redis and S3 are stopped or broken, workers are
killed or hang, poison events arrive. Every accepted upload must still end `completed` or
`failed`, and nothing may be written twice.

Every service here is this module's own (its own embedded broker, PostgreSQL cluster,
redis-server and moto server behind a fault-injecting proxy): stopping them never touches the
machine's shared services or another test's pipeline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, Message, Producer

from infra.broker import EmbeddedBroker, free_port
from infra.kafka import ensure_topics
from tests import services
from tests.conftest import service_env, wait_final

ANALYZERS = ["colors", "quality"]
PARTITIONS = 2


class PostgresCluster:
    """A throwaway PostgreSQL cluster that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="peek-fault-pg-"))
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.folder / "data"
        subprocess.run(
            [
                *self.as_user,
                services._pg_bin("initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, services._pg_bin("pg_ctl"), "-D", str(self.data), *args],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-l", str(self.folder / "log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        services.wait_for(lambda: services.port_open("127.0.0.1", self.port), 10, "redis-server")

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class FaultyS3:
    """An HTTP proxy in front of moto's S3 server that can answer errors or answer slowly."""

    def __init__(self, upstream: str) -> None:
        self.mode = "pass"  # "pass", "error" (503 SlowDown to everything) or "slow"
        self.delay_s = 3.0
        self.requests = 0
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                return None

            def _relay(self) -> None:
                proxy.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.mode == "error":
                    payload = b"<Error><Code>SlowDown</Code><Message>injected fault</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if proxy.mode == "slow":
                    time.sleep(proxy.delay_s)
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{host}:{port}"
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


class Harness:
    """This module's services and Peek processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.broker = EmbeddedBroker(log_path=folder / "broker.log").start()
        ensure_topics(self.broker.bootstrap, PARTITIONS)
        self.postgres = PostgresCluster()
        self.postgres.start()
        self.redis = RedisServer()
        self.redis.start()
        self.moto = contextlib.ExitStack()
        self.s3 = FaultyS3(self.moto.enter_context(services.s3_server()))
        env = service_env(
            self.postgres.url,
            self.redis.url,
            self.s3.url,
            self.broker.bootstrap,
            folder / "data",
            bucket="faults",
        )
        env.update(
            {
                "PEEK_ANALYZERS": ",".join(ANALYZERS),
                "PEEK_TOPIC_PARTITIONS": str(PARTITIONS),
                "PEEK_RECONCILE_INTERVAL_S": "2",
                "PEEK_RECONCILE_AFTER_S": "25",
                "PEEK_RECONCILE_MAX_ATTEMPTS": "6",
                "PEEK_PRODUCE_TIMEOUT_S": "3",
                "PEEK_ANALYZER_TIMEOUT_S": "4",
                "PEEK_BROKER_EPHEMERAL": "1",
            }
        )
        self.peek = services.PeekProcesses(env, folder / "logs")
        self.http = httpx.Client(base_url=self.peek.url, timeout=60)
        self.accepted: list[int] = []

    def start_pipeline(self) -> None:
        self.peek.start_api()
        self.peek.start_workers(ANALYZERS)
        self.peek.start_sink()

    def start_injected_worker(self, analyzer: str, inject: str, env: dict[str, str] | None = None) -> None:
        """A worker whose analyzers misbehave on purpose (see tests/fault_launcher.py)."""
        log = open(self.peek.log_dir / f"worker-{analyzer}-injected.log", "ab")  # noqa: SIM115
        self.peek.processes[f"worker-{analyzer}"] = subprocess.Popen(
            [sys.executable, "-m", "tests.fault_launcher", "worker", "--analyzers", analyzer],
            env={
                **os.environ,
                **self.peek.env,
                "PEEK_INJECT": inject,
                "PEEK_WORKER_PROCESSES": "0",
                **(env or {}),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=services.REPO,
            start_new_session=True,
        )

    def upload(self, corpus: Path, name: str = "apple.jpg") -> httpx.Response:
        data = (corpus / name).read_bytes() + uuid.uuid4().bytes  # unique bytes: no deduplication
        response = self.http.post("/api/analyze", files={"image": (name, data)})
        if response.status_code == 202:
            self.accepted.append(response.json()["id"])
        return response

    def wait_all_final(self, image_ids: list[int], timeout_s: float = 150) -> dict[int, dict]:
        return {image_id: wait_final(self.http, image_id, timeout_s) for image_id in image_ids}

    def assert_nothing_twice(self) -> None:
        """One row per accepted upload, at most one result per (image, analyzer), one original each."""
        with psycopg.connect(self.postgres.url) as connection:
            rows = connection.execute("SELECT id FROM images ORDER BY id").fetchall()
            per_analyzer = connection.execute(
                "SELECT image_id, analyzer, count(*) FROM analysis_results GROUP BY 1, 2 HAVING count(*) > 1"
            ).fetchall()
            keys = connection.execute("SELECT storage_key FROM images").fetchall()
        assert sorted(row[0] for row in rows) == sorted(set(self.accepted))
        assert per_analyzer == []
        assert len({key[0] for key in keys}) == len(keys)

    def close(self) -> None:
        self.http.close()
        self.peek.stop_all()
        self.broker.stop()
        self.redis.stop()
        self.s3.close()
        self.moto.close()
        self.postgres.remove()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    rig = Harness(tmp_path_factory.mktemp("faults"))
    try:
        rig.start_pipeline()
        # Faults start only once the whole pipeline has processed an image.
        first = rig.upload(services.CORPUS, "apple.jpg").json()["id"]
        rig.wait_all_final([first], timeout_s=180)
        yield rig
    finally:
        rig.close()


def test_poison_events_go_to_the_dead_letter_topic_and_the_partition_moves_on(
    harness: Harness, corpus
) -> None:
    producer = Producer({"bootstrap.servers": harness.broker.bootstrap})
    missing = {
        "id": 987654,
        "storage_key": "originals/gone/never-stored.png",
        "content_type": "image/png",
        "size": 10,
        "width": 10,
        "height": 10,
        "sha256": "0" * 64,
        "expected_analyzers": ANALYZERS,
    }
    poison = [
        ("image.uploaded", b"{not json at all", "malformed image.uploaded"),
        (
            "image.uploaded",
            json.dumps({**missing, "schema_version": 99}).encode(),
            "unknown schema_version 99",
        ),
        ("image.uploaded", json.dumps(missing).encode(), "no longer in storage"),
        ("image.analysis.partial", b"\x00\xff garbage", "malformed image.analysis.partial"),
    ]
    for partition in range(PARTITIONS):  # every partition gets poison, so every one must move past it
        for topic, value, _ in poison:
            producer.produce(topic, key=b"987654", value=value, partition=partition)
    producer.flush(10)

    # Uploads after the poison complete: no partition is stuck behind it.
    after = [harness.upload(corpus, name).json()["id"] for name in ("apple.jpg", "orange.jpg", "board.jpg")]
    results = harness.wait_all_final(after)
    assert all(result["status"] == "completed" for result in results.values())

    wanted = {words for _, _, words in poison}
    letters = dead_letters(
        harness.broker.bootstrap, lambda seen: all(any(w in h["peek_reason"] for h in seen) for w in wanted)
    )
    reasons = [headers["peek_reason"] for headers in letters]
    assert all(h["peek_source_topic"] in ("image.uploaded", "image.analysis.partial") for h in letters)
    for words in wanted:
        assert any(words in reason for reason in reasons), (words, reasons)


def read_topic(
    bootstrap: str, topic: str, enough: Callable[[list[Message]], bool], *, to_the_end: bool = False
) -> list[Message]:
    """The topic's messages from the start until ``enough`` says so (60 s at most); with
    ``to_the_end``, then on until a second passes without one."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen: list[Message] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            satisfied = enough(seen)
            if satisfied and not to_the_end:
                break
            message = consumer.poll(1.0)
            if message is None and satisfied:
                break
            if message is not None and not message.error():
                seen.append(message)
    finally:
        consumer.close()
    return seen


def dead_letters(bootstrap: str, enough: Callable[[list[dict[str, str]]], bool]) -> list[dict[str, str]]:
    """The headers of the dead letters, read from the start until ``enough`` says so (60 s at most)."""

    def headers(messages: list[Message]) -> list[dict[str, str]]:
        return [{name: value.decode() for name, value in m.headers() or []} for m in messages]

    return headers(read_topic(bootstrap, "peek.dead-letter", lambda seen: enough(headers(seen))))


def test_a_backlog_with_poison_in_it_is_worked_off_in_mixed_batches(harness: Harness, corpus) -> None:
    # The quality worker is away while poison and good images queue up, so that it comes back to
    # a backlog and takes them in batches that mix the two.
    harness.peek.stop("worker-quality")
    producer = Producer({"bootstrap.servers": harness.broker.bootstrap})
    poisoned: set[tuple[str, str]] = set()

    def remember(error: object, message: object) -> None:
        poisoned.add((str(message.partition()), str(message.offset())))  # type: ignore[attr-defined]

    def poison_every_partition() -> None:
        for partition in range(PARTITIONS):
            producer.produce(
                "image.uploaded", b"{not json", key=b"1", partition=partition, on_delivery=remember
            )
        producer.flush(10)

    poison_every_partition()
    names = ["apple.jpg", "orange.jpg", "board.jpg", "stuff.jpg", "plant.jpg", "butterfly.jpg"]
    ids = [harness.upload(corpus, name).json()["id"] for name in names]
    poison_every_partition()
    harness.peek.start_workers(["quality"])
    assert_completed_with_quality(harness, ids)

    def parked(seen: list[dict[str, str]]) -> set[tuple[str, str]]:
        return {
            (h["peek_source_partition"], h["peek_source_offset"])
            for h in seen
            if h["peek_consumer"] == "peek-quality"
        }

    letters = dead_letters(harness.broker.bootstrap, lambda seen: parked(seen) >= poisoned)
    assert parked(letters) >= poisoned and len(poisoned) == 2 * PARTITIONS


def test_a_hung_analyzer_becomes_an_error_partial_and_holds_nothing_up(harness: Harness, corpus) -> None:
    # Failure injection: the colors worker is replaced by one whose analyzer never returns.
    harness.peek.stop("worker-colors")
    harness.start_injected_worker("colors", "colors=hang")
    try:
        ids = [harness.upload(corpus, name).json()["id"] for name in ("apple.jpg", "stuff.jpg", "plant.jpg")]
        results = harness.wait_all_final(ids)
        for result in results.values():
            assert result["status"] == "completed"  # quality succeeded, so the image completes
            colors = result["analyzers"]["colors"]
            assert colors["status"] == "error" and "longer than the 4 s limit" in colors["error"]
            assert result["analyzers"]["quality"]["status"] == "ok"
            assert (
                result["insights"]["dominant_colors"] is None
                and result["insights"]["quality_score"] is not None
            )
    finally:
        harness.peek.stop("worker-colors", signal.SIGKILL)
        harness.peek.start_workers(["colors"])


def test_every_analyzer_failing_ends_failed_with_reasons_in_words(harness: Harness, corpus) -> None:
    # Failure injection: both workers run analyzers that always raise.
    for analyzer in ANALYZERS:
        harness.peek.stop(f"worker-{analyzer}")
        harness.start_injected_worker(analyzer, f"{analyzer}=raise")
    try:
        image_id = harness.upload(corpus, "orange.jpg").json()["id"]
        result = harness.wait_all_final([image_id])[image_id]
        assert result["status"] == "failed"
        assert result["error"].startswith("every analyzer failed")
        for analyzer in ANALYZERS:
            assert f"{analyzer}: RuntimeError: injected failure" in result["error"]
            assert result["analyzers"][analyzer]["status"] == "error"
            assert "injected failure" in result["analyzers"][analyzer]["error"]
    finally:
        for analyzer in ANALYZERS:
            harness.peek.stop(f"worker-{analyzer}")
        harness.peek.start_workers(ANALYZERS)


def test_a_worker_killed_mid_image_loses_nothing(harness: Harness, corpus) -> None:
    # Failure injection: a slow quality analyzer, so that the kill lands while the image is analysed.
    harness.peek.stop("worker-quality")
    harness.start_injected_worker("quality", "quality=slow")
    ids = [harness.upload(corpus, name).json()["id"] for name in ("aero3.jpg", "butterfly.jpg")]
    time.sleep(8)  # the slow worker has joined its group and holds the images
    harness.peek.stop("worker-quality", signal.SIGKILL)
    harness.peek.start_workers(["quality"])
    assert_completed_with_quality(harness, ids)


def test_a_backlog_deeper_than_the_overdue_deadline_is_worked_off_without_re_emitting(
    harness: Harness, corpus
) -> None:
    # Bulk ingestion in small: images wait in Kafka behind a slow but working quality analyzer for
    # longer than PEEK_RECONCILE_AFTER_S (25 s here). The reconciler sees that quality's committed
    # offsets have not reached their events yet and leaves them queued: nothing is re-emitted and
    # nothing analysed twice. Failure injection: each quality analysis sleeps 8 s (within its time
    # limit, raised for this worker), two at a time.
    harness.peek.stop("worker-quality")
    harness.start_injected_worker(
        "quality",
        "quality=slow",
        {"PEEK_INJECT_SLOW_S": "8", "PEEK_ANALYZER_TIMEOUT_S": "30", "PEEK_WORKER_CONCURRENCY": "2"},
    )
    try:
        ids = [harness.upload(corpus, name).json()["id"] for name in ["apple.jpg", "orange.jpg"] * 5]
        assert_completed_with_quality(harness, ids)
    finally:
        harness.peek.stop("worker-quality", signal.SIGKILL)
        harness.peek.start_workers(["quality"])
    with psycopg.connect(harness.postgres.url) as connection:
        waited = connection.execute(
            "SELECT max(q.created_at - c.created_at) FROM analysis_results q JOIN analysis_results c"
            " ON c.image_id = q.image_id AND c.analyzer = 'colors'"
            " WHERE q.analyzer = 'quality' AND q.image_id = ANY(%s)",
            [ids],
        ).fetchone()[0]
        rows = connection.execute(
            "SELECT id, emit_attempts, event_partition, event_offset FROM images WHERE id = ANY(%s)", [ids]
        ).fetchall()
    assert waited.total_seconds() > 25, "the last image waited longer than the overdue deadline"
    assert [row[1] for row in rows] == [0] * len(ids), "none was re-emitted"
    wanted = {str(image_id).encode() for image_id in ids}
    events = read_topic(
        harness.broker.bootstrap,
        "image.uploaded",
        lambda seen: wanted <= {m.key() for m in seen},
        to_the_end=True,
    )
    where = sorted((int(m.key()), m.partition(), m.offset()) for m in events if m.key() in wanted)
    assert where == sorted((r[0], r[2], r[3]) for r in rows), "one event each, and each row knows where"


def assert_completed_with_quality(harness: Harness, ids: list[int]) -> None:
    """Every image ends completed with quality's part ok, and no partial was recorded twice."""
    for result in harness.wait_all_final(ids).values():
        assert result["status"] == "completed"
        assert result["analyzers"]["quality"]["status"] == "ok"
    harness.assert_nothing_twice()


def test_redis_stopping_costs_speed_not_correctness(harness: Harness, corpus) -> None:
    done = harness.upload(corpus, "apple.jpg").json()["id"]
    harness.wait_all_final([done])
    harness.redis.stop()
    try:
        health = harness.http.get("/api/health")
        assert health.status_code == 200 and health.json()["redis"] == "disconnected"
        assert health.json()["status"] == "degraded"
        assert harness.http.get(f"/api/results/{done}").json()["status"] == "completed"  # from PostgreSQL
        during = harness.upload(corpus, "orange.jpg")
        assert during.status_code == 202
        assert harness.wait_all_final([during.json()["id"]])[during.json()["id"]]["status"] == "completed"
    finally:
        harness.redis.start()


def test_postgres_stopping_answers_503_and_loses_nothing(harness: Harness, corpus) -> None:
    before = [harness.upload(corpus, name).json()["id"] for name in ("board.jpg", "stuff.jpg")]
    harness.postgres.stop()
    try:
        response = harness.upload(corpus, "apple.jpg")
        assert response.status_code == 503 and response.headers["Retry-After"]
        # Either the key check or the upload's own write meets the stopped database first.
        error = response.json()["error"]
        assert "database is unavailable" in error or "cannot check API keys right now" in error
        assert harness.http.get("/api/health").status_code == 503
        time.sleep(5)  # partials arrive at the sink meanwhile; it keeps them until the database is back
    finally:
        harness.postgres.start()
    after = harness.upload(corpus, "plant.jpg")
    assert after.status_code == 202
    results = harness.wait_all_final([*before, after.json()["id"]])
    assert all(result["status"] in ("completed", "failed") for result in results.values())
    harness.assert_nothing_twice()


def test_s3_errors_and_slowness_are_bounded(harness: Harness, corpus) -> None:
    harness.s3.mode = "error"
    try:
        started = time.monotonic()
        response = harness.upload(corpus, "apple.jpg")
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert "storage is unavailable" in response.json()["error"]
        assert time.monotonic() - started < 60  # retries with backoff, then a deadline
    finally:
        harness.s3.mode = "pass"
    harness.s3.mode = "slow"
    try:
        slow = harness.upload(corpus, "orange.jpg")
        assert slow.status_code == 202
    finally:
        harness.s3.mode = "pass"
    assert harness.wait_all_final([slow.json()["id"]])[slow.json()["id"]]["status"] == "completed"
    harness.assert_nothing_twice()


def test_broker_outage_answers_503_and_everything_resumes(harness: Harness, corpus) -> None:
    # With the quality worker away, these images wait in the broker when it goes: their events are lost.
    harness.peek.stop("worker-quality")
    in_flight = [
        harness.upload(corpus, name).json()["id"] for name in ("apple.jpg", "sudoku.png", "notes.png")
    ]
    for image_id in in_flight:
        assert harness.http.get(f"/api/results/{image_id}").status_code == 202
    port = harness.broker.port
    harness.broker.stop()
    outage_started = time.monotonic()
    try:
        started = time.monotonic()
        response = harness.upload(corpus, "orange.jpg")
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert "event broker is unavailable" in response.json()["error"]
        assert time.monotonic() - started < 30  # bounded by PEEK_PRODUCE_TIMEOUT_S, no hang
        assert harness.http.get("/api/health").status_code == 503
        time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
    finally:
        # The memory-only broker comes back empty, on the same address.
        harness.broker = EmbeddedBroker(port=port, log_path=harness.folder / "broker.log").start()
    harness.peek.start_workers(["quality"])
    services.wait_for(
        lambda: harness.http.get("/api/health").status_code == 200, 60, "the API to see the broker"
    )
    after = harness.upload(corpus, "butterfly.jpg")
    assert after.status_code == 202
    results = harness.wait_all_final([*in_flight, after.json()["id"]], timeout_s=180)
    assert all(result["status"] == "completed" for result in results.values()), results
    harness.assert_nothing_twice()
