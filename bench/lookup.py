"""Result lookup under load: the API as it really runs (`peek api`, uvicorn) on PostgreSQL and Redis.

    python -m bench.lookup [--quick] [--connections 8] [--seconds 10]

Seeds a fresh PostgreSQL database with completed and processing images (five analyzer rows each),
starts `peek api` with Redis and an embedded broker, and drives it from an asyncio keep-alive HTTP
client (raw HTTP/1.1, so the generator itself stays cheap on a small machine). Phases:

- baseline: single reads of processing images, which are never cached (a database read each);
- cached single reads of completed images (targets: >= 2,000/s, p99 < 10 ms);
- baseline batch: 100 processing ids per request (database);
- cached batch reads of 100 completed ids (target: p99 < 20 ms).

Only 127.0.0.1 is targeted; every phase stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
ANALYZERS = ["colors", "quality", "faces", "text", "scene"]
INSIGHTS = {
    "dominant_colors": ["#1f2a44", "#d9c7a1", "#8a5a3c", "#f0f0ee", "#3d6b35"],
    "brightness": 121.4,
    "faces_detected": 1,
    "face_locations": [{"x": 120, "y": 80, "width": 64, "height": 64}],
    "text_found": True,
    "extracted_text": "OPEN 24 HOURS",
    "word_count": 3,
    "sharpness_score": 312.5,
    "blur_level": "low",
    "contrast_score": 58.2,
    "quality_score": 78.0,
    "scene_type": "outdoor",
    "scene_confidence": 0.83,
}


def seed(database_url: str, completed: int, processing: int) -> tuple[list[int], list[int]]:
    """Rows as the sink leaves them; returns (completed ids, processing ids)."""
    now = datetime.now(UTC)
    ids: dict[str, list[int]] = {"completed": [], "processing": []}
    with psycopg.connect(database_url) as connection, connection.cursor() as cursor:
        for status, count in (("completed", completed), ("processing", processing)):
            for _ in range(count):
                cursor.execute(
                    "INSERT INTO images (storage_key, content_type, size_bytes, width, height, sha256, "
                    "status, expected_analyzers, insights, scene_type, faces_detected, text_found, "
                    "emit_attempts, created_at, updated_at, completed_at) VALUES "
                    "(%s, 'image/jpeg', 123456, 640, 480, %s, %s, %s, %s, %s, %s, %s, 0, %s, %s, %s) "
                    "RETURNING id",
                    (
                        f"originals/bench/{uuid.uuid4().hex}.jpg",
                        uuid.uuid4().hex,
                        status,
                        json.dumps(ANALYZERS),
                        json.dumps(INSIGHTS) if status == "completed" else None,
                        "outdoor" if status == "completed" else None,
                        1 if status == "completed" else None,
                        True if status == "completed" else None,
                        now,
                        now,
                        now if status == "completed" else None,
                    ),
                )
                image_id = cursor.fetchone()[0]  # type: ignore[index]
                ids[status].append(image_id)
                cursor.executemany(
                    "INSERT INTO analysis_results (image_id, analyzer, analyzer_version, status, result, "
                    "error, elapsed_ms, created_at) VALUES (%s, %s, '1', 'ok', '{}', NULL, 12.5, %s)",
                    [(image_id, name, now) for name in ANALYZERS],
                )
    return ids["completed"], ids["processing"]


# --- the load generator -------------------------------------------------------------------------


async def _connection(
    port: int, paths: list[str], deadline: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pick = random.Random().choice
    try:
        while time.perf_counter() < deadline:
            request = f"GET {pick(paths)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head[9:12])
            if status >= 300 and status != 304:
                errors.append(status)
    finally:
        writer.close()
        with suppress(Exception):
            await writer.wait_closed()


async def _drive(
    port: int, paths: list[str], seconds: float, connections: int
) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    errors: list[int] = []
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(_connection(port, paths, deadline, latencies, errors) for _ in range(connections)))
    return latencies, errors


def drive(port: int, paths: list[str], seconds: float, connections: int) -> dict[str, float]:
    started = time.perf_counter()
    latencies, errors = asyncio.run(_drive(port, paths, seconds, connections))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "rate": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


# --- the system under test ----------------------------------------------------------------------


def _fresh_database(server: str) -> tuple[str, str]:
    name = f"peek_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + "/" + name, name


def _drop_database(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(Exception), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"the API did not become healthy at {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short phases, fewer rows")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--postgres", default=os.environ.get("BENCH_POSTGRES", "postgresql://root@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14"))
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    rows = 500 if args.quick else 2000

    import redis

    from infra.broker import EmbeddedBroker, free_port
    from infra.kafka import ensure_topics
    from sink.db import make_engine, migrate

    redis.Redis.from_url(args.redis).flushdb()
    database_url, database_name = _fresh_database(args.postgres)
    broker = EmbeddedBroker().start()
    api = None
    try:
        migrate(make_engine(database_url.replace("postgresql://", "postgresql+psycopg://")))
        ensure_topics(broker.bootstrap, 2)
        completed, processing = seed(database_url, rows, rows)
        port = free_port()
        data_dir = Path(tempfile.mkdtemp(prefix="peek-bench-"))
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": args.redis,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "PEEK_DATA_DIR": str(data_dir),
            "PEEK_LOG_LEVEL": "warning",
        }
        log = open(data_dir / "api.log", "wb")  # noqa: SIM115 - closed with the process
        api = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "api", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _wait_healthy(f"http://127.0.0.1:{port}/api/health", 60)

        single_db = [f"/api/results/{i}" for i in processing]
        single_cached = [f"/api/results/{i}" for i in completed]

        def batches(ids: list[int]) -> list[str]:
            rng = random.Random(7)
            return ["/api/results?ids=" + ",".join(map(str, rng.sample(ids, 100))) for _ in range(200)]

        # Warm the caches once (every completed result read), as a running system would be.
        drive(port, single_cached, min(2.0, seconds), args.connections)
        for path in single_cached:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as response:
                response.read()

        print(
            f"lookup bench: {rows} completed + {rows} processing images, PostgreSQL + Redis, "
            f"`peek api` (uvicorn), {args.connections} keep-alive connections, {seconds:.0f} s per phase"
        )
        phases = [
            ("single, uncached (DB) [baseline]", single_db),
            ("single, cached completed", single_cached),
            ("batch of 100, uncached (DB) [baseline]", batches(processing)),
            ("batch of 100, cached completed", batches(completed)),
        ]
        measured = {}
        for name, paths in phases:
            measured[name] = result = drive(port, paths, seconds, args.connections)
            print(
                f"  {name:42s} {result['rate']:8.0f} req/s   p50 {result['p50_ms']:6.2f} ms   "
                f"p99 {result['p99_ms']:6.2f} ms   errors {result['errors']:.0f}"
            )
        single = measured["single, cached completed"]
        single_base = measured["single, uncached (DB) [baseline]"]
        batch = measured["batch of 100, cached completed"]
        batch_base = measured["batch of 100, uncached (DB) [baseline]"]
        print(
            f"  cached single reads: {single['rate'] / single_base['rate']:.1f}x the baseline's throughput, "
            f"p99 {single_base['p99_ms'] / single['p99_ms']:.1f}x lower  "
            f"(target >= 2000/s and p99 < 10 ms: {'met' if single['rate'] >= 2000 and single['p99_ms'] < 10 else 'NOT met'})"
        )
        print(
            f"  cached batch reads:  {batch['rate'] / batch_base['rate']:.1f}x the baseline's throughput, "
            f"p99 {batch_base['p99_ms'] / batch['p99_ms']:.1f}x lower  "
            f"(target p99 < 20 ms: {'met' if batch['p99_ms'] < 20 else 'NOT met'})"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            for line in response.read().decode().splitlines():
                if line.startswith("peek_result_cache_hit_ratio"):
                    print(f"  {line}")
    finally:
        if api is not None:
            api.terminate()
            with suppress(subprocess.TimeoutExpired):
                api.wait(15)
        broker.stop()
        _drop_database(args.postgres, database_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
