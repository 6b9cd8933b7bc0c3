"""Soak: steady mixed load at 70% of measured capacity, then a burst at 3x, against `peek up`
on PostgreSQL + Redis. Prints p99 per minute, memory and open file descriptors of Peek's
processes, and status counts; ratios are against the capacity measured in the same run.

    python -m bench.soak --quick      # ~1 minute steady
    python -m bench.soak              # 10 minutes steady
Only targets 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from infra.broker import free_port

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def _peek_pids(root: int) -> list[int]:
    """The `peek up` process and all its descendants."""
    found, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            found.append(int(child))
            frontier.append(int(child))
    return found


def footprint(root: int) -> tuple[float, int]:
    """(resident MB, open file descriptors) summed over Peek's processes."""
    rss_kb, fds = 0, 0
    for pid in _peek_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kb += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return rss_kb / 1024, fds


class Load:
    def __init__(self, base: str, images: list[bytes]) -> None:
        self.http = httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=200))
        self.images = images
        self.ids: list[int] = []

    def _image(self) -> bytes:
        return random.choice(self.images) + uuid.uuid4().bytes

    async def one(self) -> tuple[int, float]:
        """One mixed request: 60% result reads, 30% uploads, 10% batches of 4."""
        started = time.perf_counter()
        roll = random.random()
        try:
            if roll < 0.6 and self.ids:
                response = await self.http.get(f"/api/results/{random.choice(self.ids)}")
            elif roll < 0.9:
                response = await self.http.post("/api/analyze", files={"image": ("a.jpg", self._image())})
                if response.status_code == 202:
                    self.ids.append(response.json()["id"])
            else:
                files = [("images", (f"b{i}.jpg", self._image())) for i in range(4)]
                response = await self.http.post("/api/analyze/batch", files=files)
            status = response.status_code
        except httpx.HTTPError:
            status = 599  # connection refused or reset: the service did not answer
        return status, time.perf_counter() - started


async def closed_loop(load: Load, seconds: float, concurrency: int) -> float:
    """Requests per second with `concurrency` clients back to back: the capacity."""
    done = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await load.one()
            done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / seconds


async def open_loop(load: Load, rate: float, seconds: float) -> tuple[Counter[int], list[float]]:
    """Requests started at a fixed rate whatever the answers: what queueing looks like."""
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    tasks = []

    async def fire() -> None:
        status, elapsed = await load.one()
        statuses[status] += 1
        latencies.append(elapsed)

    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        while sent < due:
            tasks.append(asyncio.create_task(fire()))
            sent += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    return statuses, latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000 if ordered else 0.0


async def run(args: argparse.Namespace, base: str, root: int) -> int:
    images = [path.read_bytes() for path in sorted(CORPUS.glob("*.jpg"))[:8]]
    load = Load(base, images)
    capacity = await closed_loop(load, 15 if args.quick else 30, 8)
    print(f"capacity (8 closed-loop clients): {capacity:.1f} req/s  [baseline = 1.00]", flush=True)
    steady_rate = 0.7 * capacity
    minutes = 1 if args.quick else 10
    rss0, fds0 = footprint(root)
    print(f"start: rss {rss0:.0f} MB, open fds {fds0}", flush=True)
    errors = 0
    for minute in range(1, minutes + 1):
        statuses, latencies = await open_loop(load, steady_rate, 60)
        errors += sum(count for status, count in statuses.items() if status >= 400)
        rss, fds = footprint(root)
        print(
            f"minute {minute}: {sum(statuses.values())} req at {steady_rate:.1f} req/s (0.70x capacity), "
            f"p99 {p99(latencies):.0f} ms, statuses {dict(sorted(statuses.items()))}, "
            f"rss {rss:.0f} MB ({rss / rss0:.2f}x start), fds {fds} ({fds / max(1, fds0):.2f}x start)",
            flush=True,
        )
    statuses, latencies = await open_loop(load, 3 * capacity, 15)
    alive = all(Path(f"/proc/{pid}").exists() for pid in _peek_pids(root))
    health = (await load.http.get("/api/health")).status_code
    print(
        f"burst at {3 * capacity:.1f} req/s (3.00x capacity) for 15 s: statuses {dict(sorted(statuses.items()))}, "
        f"p99 {p99(latencies):.0f} ms, 5xx other than 503: "
        f"{sum(c for s, c in statuses.items() if s >= 500 and s != 503)}, processes alive: {alive}, "
        f"health after: {health}",
        flush=True,
    )
    print(f"steady-phase error responses: {errors}", flush=True)
    await load.http.aclose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 minute steady instead of 10")
    parser.add_argument("--database-url", default="postgresql://root@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args()

    import psycopg

    name = f"peek_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database_url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="peek-soak-"))
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": args.redis_url, "OMP_THREAD_LIMIT": "1"}
    for unset in ("KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL", "R2_BUCKET_NAME", "R2_ACCOUNT_ID"):
        env.pop(unset, None)
    up = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            print("peek up did not become healthy", file=sys.stderr)
            return 1
        return asyncio.run(run(args, base, up.pid))
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(60)
        with psycopg.connect(args.database_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
