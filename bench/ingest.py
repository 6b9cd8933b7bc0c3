"""Ingest alone (analysis not counted): uploads/s and latency of 200 KB JPEGs into a running API.

Starts the embedded broker and ``peek api`` on embedded defaults (SQLite, local storage), no
workers, and pushes distinct ~200 KB JPEGs through ``POST /api/analyze`` (one image per request)
and ``POST /api/analyze/batch``, from this process on 127.0.0.1, for each number of API processes
asked for (``PEEK_API_WORKERS``). Prints uploads/s, request latency percentiles, the ratio to the
300 uploads/s target, the CPU each side used per upload (API, broker, and this load generator,
which shares the machine), and the API's peak memory.

The requests are built before the clock starts and sent over keep-alive sockets by a lean client
(bench/_loadgen.py): a general HTTP client would spend more CPU per request than the server.

    .venv/bin/python bench/ingest.py [--quick] [--uploads N] [--concurrency C] [--api-workers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from bench._corpus import CORPUS, big_jpeg  # noqa: E402
from bench._loadgen import Outcome, multipart_request, send_all  # noqa: E402
from bench._procs import cpu_seconds, tree_cpu, tree_peaks  # noqa: E402
from infra.broker import EmbeddedBroker, free_port  # noqa: E402
from infra.ingest_client import percentile  # noqa: E402
from infra.kafka import ensure_topics  # noqa: E402
from infra.settings import embedded_environment  # noqa: E402

TARGET_PER_S = 300
TARGET_P99_MS = 100
WARM_UPLOADS = 1000


def jpeg_near(size_bytes: int) -> bytes:
    """A photo-like JPEG of about ``size_bytes`` (a corpus photo, upscaled with noise)."""
    source = (CORPUS / "scenetext05.jpg").read_bytes()
    megapixels = 0.3
    for _ in range(12):
        data = big_jpeg(source, megapixels)
        if abs(len(data) - size_bytes) < size_bytes * 0.08:
            return data
        megapixels *= size_bytes / len(data)
    return data


def variant(base: bytes, number: int) -> bytes:
    """The same picture with a distinct JPEG comment, so deduplication sees new bytes each time."""
    comment = f"peek bench {number}".encode()
    return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]


async def push(url: str, images: list[bytes], concurrency: int, batch: int) -> tuple[float, list[float], int]:
    """Upload every image (``batch`` per request; 1 = the single route); seconds, latencies, refusals."""
    outcome = await send_all(url, upload_requests(url, images, batch), concurrency, keep_bodies=batch > 1)
    return outcome.seconds, outcome.latencies, refusals(outcome, batch)


def upload_requests(url: str, images: list[bytes], batch: int) -> list[bytes]:
    """The prepared requests: one image each to the single route, or ``batch`` each to the batch route."""
    host = url.split("//", 1)[1]
    if batch == 1:
        return [multipart_request(host, "/api/analyze", "image", [("p.jpg", data)]) for data in images]
    groups = [images[i : i + batch] for i in range(0, len(images), batch)]
    return [
        multipart_request(
            host, "/api/analyze/batch", "images", [(f"p{i}.jpg", d) for i, d in enumerate(group)]
        )
        for group in groups
    ]


def refusals(outcome: Outcome, batch: int) -> int:
    """Uploads not accepted: non-202 answers, and refused parts of batch answers."""
    refused = sum(count for status, count in outcome.statuses.items() if status != 202) * batch
    for body in outcome.bodies:
        results = body.get("results")
        refused += sum("id" not in entry for entry in results) if isinstance(results, list) else 0
    return refused


def start_api(data_dir: Path, bootstrap: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **embedded_environment(os.environ),
        "PEEK_DATA_DIR": str(data_dir),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PEEK_LOG_LEVEL": "warning",
        "PEEK_API_WORKERS": str(workers),
    }
    log = open(data_dir / "api.log", "ab")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "api", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit(f"the API did not come up; see {data_dir / 'api.log'}")


def report(
    label: str, count: int, outcome: Outcome, refused: int, per_request: int, cpu: dict[str, float]
) -> None:
    rate = count / outcome.seconds
    p50, p99 = (percentile(outcome.latencies, share) * 1000 for share in (0.5, 0.99))
    if per_request == 1:
        verdict = "meets" if rate >= TARGET_PER_S and p99 < TARGET_P99_MS and not refused else "MISSES"
        target = f"{verdict} {TARGET_PER_S}/s with p99 < {TARGET_P99_MS} ms"
    else:
        # The latency target is a single upload's; a batch request's latency is its images' sum.
        target = f"{p99 / per_request:.1f} ms of p99 per image; the latency target is for single uploads"
    print(
        f"{label:<44} {count:>6} uploads in {outcome.seconds:6.2f} s = {rate:6.1f} uploads/s "
        f"({rate / TARGET_PER_S:.2f}× the {TARGET_PER_S}/s target); request latency p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms ({per_request} image{'s' if per_request > 1 else ''}/request; {target})"
        f"{'; REFUSED ' + str(refused) if refused else ''}"
    )
    print(
        "  CPU per upload: "
        + ", ".join(f"{name} {seconds * 1000 / count:.2f} ms" for name, seconds in cpu.items())
        + f", load generator {outcome.client_cpu_s * 1000 / count:.2f} ms"
    )


def print_peaks(moment: str, before: dict[int, tuple[str, float]], pid: int) -> None:
    """Peak RSS of every API process now against ``before``: memory must not grow with uploads."""
    now = tree_peaks(pid)
    print(
        f"  peak RSS {moment}: "
        + ", ".join(
            f"{name} {before.get(each, (name, 0.0))[1]:.0f} → {mb:.0f} MB"
            f" ({mb / max(1.0, before.get(each, (name, 0.0))[1]):.2f}×)"
            for each, (name, mb) in now.items()
            if mb > 0
        )
    )


def run(url: str, api_pid: int, broker_pid: int, images: list[bytes], concurrency: int, batch: int):
    """One measured run: the outcome, refusals, and CPU seconds used by the API and the broker."""
    requests = upload_requests(url, images, batch)
    api_before = sum(seconds for _, seconds in tree_cpu(api_pid).values())
    broker_before = cpu_seconds(broker_pid)
    outcome = asyncio.run(send_all(url, requests, concurrency, keep_bodies=batch > 1))
    cpu = {
        "API": sum(seconds for _, seconds in tree_cpu(api_pid).values()) - api_before,
        "broker": cpu_seconds(broker_pid) - broker_before,
    }
    return outcome, refusals(outcome, batch), cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer uploads")
    parser.add_argument("--uploads", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=16, help="connections of the single-image runs")
    parser.add_argument(
        "--api-workers", type=int, nargs="+", default=[1, 2], help="PEEK_API_WORKERS settings"
    )
    args = parser.parse_args(argv)
    # Full runs: 1,000 warm-up uploads and 9,000 measured, so memory is compared from 1,000 to 10,000.
    count = args.uploads or (1500 if args.quick else 9000)
    base = jpeg_near(200_000)
    width, height = Image.open(io.BytesIO(base)).size
    print(
        f"# Ingest alone: {count} distinct {len(base) / 1000:.0f} KB JPEGs ({width}×{height}) per run, "
        f"embedded broker, SQLite, local storage, {os.cpu_count()} cores, single-image runs over "
        f"{args.concurrency} connections, batches of 16 over 4"
    )
    with tempfile.TemporaryDirectory(prefix="peek-bench-ingest-") as folder, EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, 6)
        assert broker.process is not None
        serial = 0
        for workers in args.api_workers:
            data_dir = Path(folder) / f"api{workers}"
            data_dir.mkdir()
            process, url = start_api(data_dir, broker.bootstrap, workers)
            try:
                # The first 1,000 uploads warm the API up; its peak memory then is the yardstick
                # for the peak after every upload of the runs.
                warm = [variant(base, -1 - i - workers * WARM_UPLOADS) for i in range(WARM_UPLOADS)]
                asyncio.run(push(url, warm, args.concurrency, 1))
                peaks_warm = tree_peaks(process.pid)
                for batch, concurrency in ((1, args.concurrency), (16, 4)):
                    images = [variant(base, serial + i) for i in range(count)]
                    serial += count
                    outcome, refused, cpu = run(
                        url, process.pid, broker.process.pid, images, concurrency, batch
                    )
                    route = "POST /api/analyze" if batch == 1 else "POST /api/analyze/batch"
                    processes = f"{workers} API process{'es' if workers > 1 else ''}"
                    report(f"{route} ({processes})", count, outcome, refused, batch, cpu)
                    if batch == 1:
                        print_peaks(
                            f"after {WARM_UPLOADS:,} → {WARM_UPLOADS + count:,} single uploads",
                            peaks_warm,
                            process.pid,
                        )
                print_peaks("after the batch run too", peaks_warm, process.pid)
            finally:
                process.terminate()
                process.wait(20)


if __name__ == "__main__":
    main()
