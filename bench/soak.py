"""Soak: steady mixed load at 70% of the measured capacity, then a burst at 3x, against `peek up`
on PostgreSQL + Redis, with admission control set low enough (PEEK_MAX_BACKLOG) to show its 503s.

Capacity is what the whole system sustains end to end: closed-loop clients run the mix (60%
result reads, 30% uploads, 10% batches of 4) and an upload only counts as done once every image
of it is analysed, so the analysis workers, not just the API, set the rate. At 70% of it the
analysis backlog stays bounded. Every minute the steady phase prints requests, p99 latency,
statuses, the backlog, and resident memory and open file descriptors of each Peek process
(API, each worker, sink, broker); ratios are against the capacity (or minute 1) of the same run.

    .venv/bin/python -m bench.soak --quick      # 1 minute steady, 1 minute capacity window
    .venv/bin/python -m bench.soak              # 10 minutes steady, 2 minutes capacity window
Only targets 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from bench._procs import children_of
from infra.broker import free_port

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
FINAL = ("completed", "failed")
MIX = (("read", 0.6), ("upload", 0.3), ("batch", 0.1))
BATCH_SIZE = 4


# --- Peek's processes -----------------------------------------------------------------------------


def process_name(pid: int) -> str:
    """api, worker-<analyzer>, sink, up or broker, from the command line."""
    try:
        words = [
            w.decode(errors="replace") for w in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if w
        ]
    except OSError:
        return f"pid {pid}"
    if "infra.cli" in words:
        rest = words[words.index("infra.cli") + 1 :]
        if rest[:1] == ["worker"] and "--analyzers" in rest:
            return "worker-" + rest[rest.index("--analyzers") + 1]
        return rest[0] if rest else "peek"
    if words and words[1:2] == ["broker"]:
        return "broker"  # the embedded Tansu broker
    return Path(words[0]).name if words else f"pid {pid}"


def _rss_fds(pid: int) -> tuple[float, int]:
    try:
        rss_kb = next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0.0, 0


def peek_processes(root: int) -> dict[str, list[int]]:
    """Each process `peek up` started (with its own children, e.g. analyzer pools), by name."""
    named: dict[str, list[int]] = {"up": [root]}
    for child in children_of(root):
        try:
            parent = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if parent == root:
            named[process_name(child)] = [child, *children_of(child)]
    return named


def footprint(root: int) -> dict[str, tuple[float, int]]:
    """(resident MB, open file descriptors) of each named Peek process and its children."""
    result = {}
    for name, pids in sorted(peek_processes(root).items()):
        each = [_rss_fds(pid) for pid in pids]
        result[name] = (sum(rss for rss, _ in each), sum(fds for _, fds in each))
    return result


def show(footprints: dict[str, tuple[float, int]]) -> str:
    return ", ".join(f"{name} {rss:.0f}MB/{fds}fd" for name, (rss, fds) in footprints.items())


# --- the database ---------------------------------------------------------------------------------


def backlog(database_url: str) -> int:
    """Images accepted and not yet analysed."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SELECT count(*) FROM images WHERE status = 'processing'").fetchone()
    return int(row[0]) if row else 0


# --- load -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    status: int
    elapsed: float
    image_ids: list[int] = field(default_factory=list)


class Load:
    """The mixed load: result reads of earlier uploads, single uploads and batches."""

    def __init__(self, base: str, images: list[bytes]) -> None:
        self.http = httpx.AsyncClient(
            base_url=base,
            timeout=120,
            limits=httpx.Limits(max_connections=400, max_keepalive_connections=100),
        )
        self.images = images
        self.ids: list[int] = []

    def _image(self) -> bytes:
        return random.choice(self.images) + uuid.uuid4().bytes  # new bytes: never a duplicate

    def pick(self) -> str:
        roll, total = random.random(), 0.0
        for kind, share in MIX:
            total += share
            if roll < total:
                return kind if kind != "read" or self.ids else "upload"
        return MIX[-1][0]

    async def one(self, kind: str) -> Outcome:
        started = time.perf_counter()
        ids: list[int] = []
        try:
            if kind == "read":
                response = await self.http.get(f"/api/results/{random.choice(self.ids)}")
            elif kind == "upload":
                response = await self.http.post("/api/analyze", files={"image": ("a.jpg", self._image())})
                if response.status_code == 202:
                    ids = [response.json()["id"]]
            else:
                files = [("images", (f"b{i}.jpg", self._image())) for i in range(BATCH_SIZE)]
                response = await self.http.post("/api/analyze/batch", files=files)
                if response.status_code == 202:
                    ids = [entry["id"] for entry in response.json()["results"] if "id" in entry]
            status = response.status_code
        except httpx.HTTPError:
            status = 599  # connection refused or reset: the service did not answer
        self.ids += ids
        return Outcome(kind, status, time.perf_counter() - started, ids)

    async def analysed(self, image_id: int) -> None:
        """Return once the image is completed or failed (long-polls the result)."""
        while True:
            try:
                response = await self.http.get(f"/api/results/{image_id}", params={"wait": 30})
                if response.status_code == 200 and response.json()["status"] in FINAL:
                    return
            except httpx.HTTPError:
                await asyncio.sleep(1)


async def measure_capacity(
    load: Load, warmup_s: float, window_s: float, clients: int
) -> tuple[float, float, Counter[int]]:
    """Closed loop, an upload done only when analysed: (requests/s, images analysed/s, statuses)
    over the window after the warm-up."""
    start = time.monotonic()
    window_start, window_end = start + warmup_s, start + warmup_s + window_s
    done, analysed = 0, 0
    statuses: Counter[int] = Counter()

    async def client() -> None:
        nonlocal done, analysed
        while time.monotonic() < window_end:
            outcome = await load.one(load.pick())
            if outcome.status == 503:
                await asyncio.sleep(1)  # refused: the bound is below this many clients' images
            for image_id in outcome.image_ids:
                await load.analysed(image_id)
            finished = time.monotonic()
            if window_start <= finished <= window_end:
                done += 1
                analysed += len(outcome.image_ids)
                statuses[outcome.status] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done / window_s, analysed / window_s, statuses


@dataclass
class Phase:
    """What an open-loop phase saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    refused_by_kind: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    accepted_images: int = 0
    max_backlog: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def all_latencies(self) -> list[float]:
        return [value for values in self.latencies.values() for value in values]


async def open_loop(load: Load, rate: float, seconds: float, database_url: str) -> Phase:
    """Requests started at a fixed rate whatever the answers (what queueing looks like), with the
    backlog sampled every 2 s."""
    phase = Phase()
    tasks = []

    async def fire(kind: str) -> None:
        outcome = await load.one(kind)
        phase.statuses[outcome.status] += 1
        if outcome.status == 503:
            phase.refused_by_kind[outcome.kind] += 1
        phase.latencies.setdefault(kind, []).append(outcome.elapsed)
        phase.accepted_images += len(outcome.image_ids)

    async def sample_backlog() -> None:
        while True:
            phase.max_backlog = max(phase.max_backlog, await asyncio.to_thread(backlog, database_url))
            await asyncio.sleep(2)

    sampler = asyncio.create_task(sample_backlog())
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        while sent < int(elapsed * rate):
            tasks.append(asyncio.create_task(fire(load.pick())))
            sent += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    sampler.cancel()
    return phase


def p99_ms(values: list[float]) -> float:
    """Nearest-rank 99th percentile, in ms."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)] * 1000 if ordered else 0.0


async def drain(database_url: str, timeout_s: float) -> tuple[float, int]:
    """Wait until nothing is processing: (seconds it took, backlog left)."""
    started = time.monotonic()
    left = backlog(database_url)
    while left and time.monotonic() - started < timeout_s:
        await asyncio.sleep(2)
        left = await asyncio.to_thread(backlog, database_url)
    return time.monotonic() - started, left


def ratios(now: dict[str, tuple[float, int]], then: dict[str, tuple[float, int]]) -> str:
    return ", ".join(
        f"{name} rss {now[name][0] / max(1.0, then[name][0]):.2f}x fds {now[name][1] / max(1, then[name][1]):.2f}x"
        for name in then
        if name in now
    )


async def run(args: argparse.Namespace, base: str, root: int, database_url: str) -> int:
    images = [path.read_bytes() for path in sorted(CORPUS.glob("*.jpg"))[:8]]
    load = Load(base, images)
    warmup_s, window_s = (15, 60) if args.quick else (30, 120)
    capacity, analysed_rate, statuses = await measure_capacity(load, warmup_s, window_s, args.clients)
    print(
        f"capacity ({args.clients} closed-loop clients, uploads done when analysed, {window_s} s window): "
        f"{capacity:.2f} req/s, {analysed_rate:.2f} images analysed/s, statuses {dict(sorted(statuses.items()))}"
        f"  [baseline = 1.00]",
        flush=True,
    )
    seconds, left = await drain(database_url, 300)
    print(f"drained the capacity run's backlog in {seconds:.0f} s (left: {left})", flush=True)

    processes = peek_processes(root)
    start = footprint(root)
    print(f"start: {show(start)}", flush=True)
    steady_rate = 0.7 * capacity
    minutes = 1 if args.quick else 10
    first: dict[str, tuple[float, int]] = {}
    errors: Counter[int] = Counter()
    for minute in range(1, minutes + 1):
        phase = await open_loop(load, steady_rate, 60, database_url)
        errors.update({status: count for status, count in phase.statuses.items() if status >= 400})
        now = footprint(root)
        first = first or now
        per_kind = ", ".join(
            f"{kind} {p99_ms(values):.0f}" for kind, values in sorted(phase.latencies.items())
        )
        print(
            f"minute {minute}: {phase.requests} req at {steady_rate:.2f} req/s (0.70x capacity), "
            f"p99 {p99_ms(phase.all_latencies()):.0f} ms ({per_kind}), "
            f"statuses {dict(sorted(phase.statuses.items()))}, images accepted {phase.accepted_images}, "
            f"backlog max {phase.max_backlog} end {backlog(database_url)} (bound {args.max_backlog}); "
            f"{show(now)}",
            flush=True,
        )
    print(f"steady footprint, last minute vs minute 1: {ratios(footprint(root), first)}", flush=True)
    print(
        f"steady-phase error responses: {sum(errors.values())} {dict(sorted(errors.items()))}",
        flush=True,
    )

    burst = await open_loop(load, 3 * capacity, args.burst_s, database_url)
    restarted = [name for name, pids in processes.items() if not Path(f"/proc/{pids[0]}").exists()]
    health = (await load.http.get("/api/health")).status_code
    refused = burst.statuses.get(503, 0)
    other_errors = sum(count for status, count in burst.statuses.items() if status >= 500 and status != 503)
    print(
        f"burst at {3 * capacity:.2f} req/s (3.00x capacity) for {args.burst_s} s: "
        f"statuses {dict(sorted(burst.statuses.items()))}, 503 share {refused / max(1, burst.requests):.2f} "
        f"{dict(sorted(burst.refused_by_kind.items()))} (reads refused: {burst.refused_by_kind['read']}), "
        f"p99 {p99_ms(burst.all_latencies()):.0f} ms, 5xx other than 503: {other_errors}, "
        f"backlog max {burst.max_backlog} (bound {args.max_backlog}), "
        f"processes exited: {restarted or 'none'}, health after: {health}",
        flush=True,
    )
    seconds, left = await drain(database_url, 600)
    after = await load.one("upload")
    print(
        f"after the burst: backlog drained in {seconds:.0f} s (left: {left}); next upload: {after.status}; "
        f"{show(footprint(root))}",
        flush=True,
    )
    await load.http.aclose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 minute steady instead of 10")
    parser.add_argument("--database-url", default="postgresql://root@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--clients", type=int, default=10, help="closed-loop clients measuring capacity")
    parser.add_argument(
        "--max-backlog",
        type=int,
        default=60,
        help="PEEK_MAX_BACKLOG for this run: above what 70%% load queues, below what a burst does",
    )
    parser.add_argument("--burst-s", type=int, default=30, help="length of the 3x burst")
    args = parser.parse_args()

    name = f"peek_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database_url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="peek-soak-"))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": args.redis_url,
        "PEEK_REDIS_NAMESPACE": name,
        "PEEK_MAX_BACKLOG": str(args.max_backlog),
        "OMP_THREAD_LIMIT": "1",
    }
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
        print(
            f"peek up on 127.0.0.1:{port}, PostgreSQL + Redis, embedded broker, {os.cpu_count()} cores, "
            f"PEEK_MAX_BACKLOG={args.max_backlog}",
            flush=True,
        )
        return asyncio.run(run(args, base, up.pid, database_url))
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(60)
        with psycopg.connect(args.database_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
