"""Ingest alone (analysis not counted): uploads/s and latency of 200 KB JPEGs into a running API.

Starts the embedded broker and ``peek api`` on embedded defaults (SQLite, local storage), no
workers, and pushes distinct ~200 KB JPEGs through ``POST /api/analyze`` (one image per request)
and ``POST /api/analyze/batch``, from this process on 127.0.0.1. Prints uploads/s, latency
percentiles, the ratio to the 300 uploads/s target, and the API's peak memory.

    .venv/bin/python bench/ingest.py [--quick] [--uploads N] [--concurrency C]
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
from bench._procs import tree_peaks  # noqa: E402
from infra.broker import EmbeddedBroker, free_port  # noqa: E402
from infra.ingest_client import percentile  # noqa: E402
from infra.kafka import ensure_topics  # noqa: E402
from infra.settings import embedded_environment  # noqa: E402

TARGET_PER_S = 300
TARGET_P99_MS = 100


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
    latencies: list[float] = []
    refused = 0
    groups = [images[i : i + batch] for i in range(0, len(images), batch)]
    queue: asyncio.Queue[list[bytes]] = asyncio.Queue()
    for group in groups:
        queue.put_nowait(group)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def sender() -> None:
            nonlocal refused
            while not queue.empty():
                group = queue.get_nowait()
                started = time.perf_counter()
                if batch == 1:
                    response = await http.post("/api/analyze", files={"image": ("p.jpg", group[0])})
                    ok = response.status_code == 202
                    refused += 0 if ok else 1
                else:
                    response = await http.post(
                        "/api/analyze/batch",
                        files=[("images", (f"p{i}.jpg", d)) for i, d in enumerate(group)],
                    )
                    refused += sum("id" not in entry for entry in response.json()["results"])
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, refused


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
    label: str, count: int, seconds: float, latencies: list[float], refused: int, per_request: int
) -> None:
    rate = count / seconds
    p50, p99 = (percentile(latencies, share) * 1000 for share in (0.5, 0.99))
    verdict = "meets" if rate >= TARGET_PER_S and p99 < TARGET_P99_MS else "MISSES"
    print(
        f"{label:<34} {count:>6} uploads in {seconds:6.2f} s = {rate:6.1f} uploads/s "
        f"({rate / TARGET_PER_S:.2f}× the {TARGET_PER_S}/s target); request latency p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms ({per_request} image/request; {verdict} {TARGET_PER_S}/s with p99 < "
        f"{TARGET_P99_MS} ms){'; REFUSED ' + str(refused) if refused else ''}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer uploads")
    parser.add_argument("--uploads", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--api-workers", type=int, default=None, help="uvicorn worker processes (default 1)")
    args = parser.parse_args(argv)
    count = args.uploads or (600 if args.quick else 3000)
    base = jpeg_near(200_000)
    width, height = Image.open(io.BytesIO(base)).size
    print(
        f"# Ingest alone: {count} distinct {len(base) / 1000:.0f} KB JPEGs ({width}×{height}) per run, "
        f"embedded broker, SQLite, local storage, {os.cpu_count()} cores, client concurrency {args.concurrency}"
    )
    with tempfile.TemporaryDirectory(prefix="peek-bench-ingest-") as folder, EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, 6)
        api_workers = [args.api_workers or 1]
        serial = 0
        for workers in api_workers:
            data_dir = Path(folder) / f"api{workers}"
            data_dir.mkdir()
            process, url = start_api(data_dir, broker.bootstrap, workers)
            try:
                warm = [variant(base, -1 - i) for i in range(40)]
                asyncio.run(push(url, warm, args.concurrency, 1))
                for batch in (1, 16):
                    images = [variant(base, serial + i) for i in range(count)]
                    serial += count
                    seconds, latencies, refused = asyncio.run(push(url, images, args.concurrency, batch))
                    route = "POST /api/analyze" if batch == 1 else "POST /api/analyze/batch"
                    report(
                        f"{route} ({workers} API process{'es' if workers > 1 else ''})",
                        count,
                        seconds,
                        latencies,
                        refused,
                        batch,
                    )
                peaks = tree_peaks(process.pid)
                print(
                    "  peak RSS: "
                    + ", ".join(f"{name} (pid {pid}) {mb:.0f} MB" for pid, (name, mb) in peaks.items())
                )
            finally:
                process.terminate()
                process.wait(20)


if __name__ == "__main__":
    main()
