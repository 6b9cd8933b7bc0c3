"""``peek ingest``: push folders of images (or an ``s3://`` prefix) through a running Peek.

Files go up in batches to ``POST /api/analyze/batch`` with a bounded number of requests in flight.
A dropped connection, a restarting API or a 503 is retried with backoff; re-sending is safe
because Peek deduplicates by content. Every accepted file is appended to a manifest (JSON lines,
file -> id), so a second run skips what is already in. ``--wait`` then follows the results to the
end and prints a summary with latency percentiles from upload to completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
from tqdm import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}
RETRY_STATUS = {429, 500, 502, 503, 504}
DEFAULT_MANIFEST = "peek-ingest-manifest.jsonl"
BATCH_BYTES = 8 * 1024 * 1024


class IngestAborted(RuntimeError):
    """The API refused a whole request for a reason that retrying cannot fix."""


@dataclass(frozen=True)
class LocalFile:
    path: Path
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return str(self.path)


def find_images(paths: Iterable[str]) -> list[LocalFile]:
    """Every image file under the given files and folders, once each, in path order."""
    seen: dict[Path, LocalFile] = {}
    for name in paths:
        root = Path(name).expanduser()
        candidates: Iterable[Path] = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in candidates:
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                resolved = path.resolve()
                stat = resolved.stat()
                seen.setdefault(resolved, LocalFile(resolved, stat.st_size, stat.st_mtime_ns))
    return sorted(seen.values(), key=lambda item: item.name)


class Manifest:
    """Append-only JSON lines: ``{"file", "id", "size", "mtime_ns"}`` per accepted file, and
    ``{"source", "start_after"}`` cursors of bucket ingestion."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, int] = {}
        self.stamps: dict[str, tuple[int, int]] = {}
        self.cursors: dict[str, str | None] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if "file" in record and "id" in record:
                    self.ids[record["file"]] = record["id"]
                    self.stamps[record["file"]] = (record.get("size", -1), record.get("mtime_ns", -1))
                elif "source" in record:
                    self.cursors[record["source"]] = record.get("start_after")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: TextIO = path.open("a")
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            self._handle.write("\n")  # end the line a crash cut short, so the next record stands alone

    def done(self, item: LocalFile) -> bool:
        """True when this file, unchanged since, was accepted by an earlier run."""
        return self.stamps.get(item.name) == (item.size, item.mtime_ns)

    def record(self, name: str, image_id: int, size: int = -1, mtime_ns: int = -1) -> None:
        self.ids[name] = image_id
        self._write({"file": name, "id": image_id, "size": size, "mtime_ns": mtime_ns})

    def record_cursor(self, source: str, start_after: str | None) -> None:
        self.cursors[source] = start_after
        self._write({"source": source, "start_after": start_after})

    def _write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


@dataclass
class IngestReport:
    """What happened to the files of one run."""

    accepted: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    uploaded_bytes: int = 0
    seconds: float = 0.0

    @property
    def ids(self) -> list[int]:
        return sorted(set(self.accepted.values()) | set(self.skipped.values()))


async def post_with_retry(
    http: httpx.AsyncClient, path: str, *, retry_for_s: float, **request: Any
) -> httpx.Response:
    """POST, retrying transport errors and 429/5xx with jittered backoff until ``retry_for_s``."""
    deadline = time.monotonic() + retry_for_s
    delay = 0.5
    while True:
        try:
            response = await http.post(path, **request)
            if response.status_code not in RETRY_STATUS:
                return response
            problem = f"HTTP {response.status_code}"
            if retry_after := response.headers.get("Retry-After", ""):
                delay = max(delay, min(30.0, float(retry_after))) if retry_after.isdigit() else delay
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() + delay > deadline:
            raise IngestAborted(f"{path} kept failing ({problem}) for {retry_for_s:.0f} s; giving up")
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(10.0, delay * 2)


def batches(
    files: list[LocalFile], max_files: int, max_bytes: int = BATCH_BYTES
) -> Iterator[list[LocalFile]]:
    """Consecutive groups of at most ``max_files`` files and about ``max_bytes`` bytes."""
    group: list[LocalFile] = []
    size = 0
    for item in files:
        if group and (len(group) >= max_files or size + item.size > max_bytes):
            yield group
            group, size = [], 0
        group.append(item)
        size += item.size
    if group:
        yield group


async def upload_files(
    http: httpx.AsyncClient,
    files: list[LocalFile],
    manifest: Manifest,
    *,
    concurrency: int,
    batch_size: int,
    reanalyze: bool,
    retry_for_s: float,
    progress: tqdm | None = None,
) -> IngestReport:
    """Upload every file not in the manifest yet; refused files are reported, not retried."""
    report = IngestReport()
    todo = []
    for item in files:
        if manifest.done(item) and not reanalyze:
            report.skipped[item.name] = manifest.ids[item.name]
        else:
            todo.append(item)
    if progress is not None:
        progress.update(len(report.skipped))
    queue: asyncio.Queue[list[LocalFile]] = asyncio.Queue()
    for group in batches(todo, batch_size):
        queue.put_nowait(group)
    params = {"reanalyze": "true"} if reanalyze else {}
    started = time.monotonic()

    async def send(group: list[LocalFile]) -> None:
        pending = list(group)
        while pending:
            parts = [("images", (item.path.name, item.path.read_bytes())) for item in pending]
            response = await post_with_retry(
                http, "/api/analyze/batch", files=parts, params=params, retry_for_s=retry_for_s
            )
            if response.status_code != 202:
                raise IngestAborted(f"the API refused the batch: HTTP {response.status_code} {response.text}")
            retry = []
            for item, entry in zip(pending, response.json()["results"], strict=True):
                if "id" in entry:
                    manifest.record(item.name, entry["id"], item.size, item.mtime_ns)
                    report.accepted[item.name] = entry["id"]
                    report.uploaded_bytes += item.size
                elif entry.get("status_code", 400) >= 500:
                    retry.append(item)  # storage, database or broker away for a moment
                else:
                    report.refused[item.name] = entry["error"]
            done = len(pending) - len(retry)
            if progress is not None:
                progress.update(done)
                progress.set_postfix_str(f"{report.uploaded_bytes / 1e6:.1f} MB", refresh=False)
            if retry:
                await asyncio.sleep(1.0)
            pending = retry

    async def sender() -> None:
        while not queue.empty():
            await send(queue.get_nowait())

    await asyncio.gather(*(sender() for _ in range(max(1, concurrency))))
    report.seconds = time.monotonic() - started
    return report


async def ingest_bucket(
    http: httpx.AsyncClient,
    source: str,
    manifest: Manifest,
    *,
    reanalyze: bool,
    retry_for_s: float,
    progress: tqdm | None = None,
) -> IngestReport:
    """Register an ``s3://bucket/prefix`` page by page through the API, resuming at the manifest's cursor."""
    report = IngestReport()
    started = time.monotonic()
    start_after = None if reanalyze else manifest.cursors.get(source)
    if source in manifest.cursors and start_after is None and not reanalyze:
        return report  # an earlier run went through the whole prefix
    while True:
        response = await post_with_retry(
            http,
            "/api/ingest/bucket",
            json={"source": source, "start_after": start_after, "reanalyze": reanalyze},
            retry_for_s=retry_for_s,
        )
        if response.status_code != 202:
            raise IngestAborted(f"the API refused {source}: {response.json().get('error', response.text)}")
        page = response.json()
        bucket = page["source"].removeprefix("s3://").split("/", 1)[0]
        for entry in page["results"]:
            name = f"s3://{bucket}/{entry['key']}"
            if "id" in entry:
                manifest.record(name, entry["id"])
                report.accepted[name] = entry["id"]
            else:
                report.refused[name] = entry["error"]
        if progress is not None:
            progress.update(len(page["results"]))
        start_after = page["next_start_after"]
        manifest.record_cursor(source, start_after)
        if start_after is None:
            break
    report.seconds = time.monotonic() - started
    return report


@dataclass
class Outcome:
    """The final state of the followed images."""

    completed: int = 0
    failed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _latency(result: dict[str, Any]) -> float | None:
    """Upload to completed, by the server's own clock."""
    try:
        created = datetime.fromisoformat(result["created_at"])
        completed = datetime.fromisoformat(result["completed_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return (completed - created).total_seconds()


async def follow_results(
    http: httpx.AsyncClient,
    image_ids: list[int],
    *,
    timeout_s: float,
    window: int = 32,
    progress: tqdm | None = None,
) -> Outcome:
    """Poll results until every image is completed or failed (or the timeout passes).

    Images finish roughly in upload order, so only the oldest ``window`` unfinished ones are asked
    about at a time: the API sees a bounded polling load whatever the size of the run.
    """
    outcome = Outcome()
    pending = sorted(set(image_ids))
    started = time.monotonic()
    deadline = started + timeout_s

    async def poll(image_id: int) -> dict[str, Any] | None:
        try:
            response = await http.get(f"/api/results/{image_id}")
        except httpx.TransportError:
            return None
        if response.status_code == 200:
            return response.json()  # type: ignore[no-any-return]
        if response.status_code == 404:
            return {"status": "failed", "error": "unknown image"}
        return None

    while pending and time.monotonic() < deadline:
        head = pending[:window]
        answers = await asyncio.gather(*(poll(image_id) for image_id in head))
        finished = {image_id for image_id, result in zip(head, answers, strict=True) if result is not None}
        for result in filter(None, answers):
            if result["status"] == "completed":
                outcome.completed += 1
            else:
                outcome.failed += 1
            if (latency := _latency(result)) is not None:
                outcome.latencies_s.append(latency)
        pending = [image_id for image_id in pending if image_id not in finished]
        if progress is not None:
            progress.update(len(finished))
        if len(finished) < len(head) // 2:
            await asyncio.sleep(0.5)
    outcome.seconds = time.monotonic() - started
    return outcome


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of the values; nan when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def summary(report: IngestReport, outcome: Outcome | None, wall_s: float) -> str:
    """The run's summary: images, failures, wall time, images/s and latency percentiles."""
    images = len(report.accepted) + len(report.skipped)
    lines = [
        f"images: {images} ({len(report.accepted)} uploaded, {len(report.skipped)} already in the "
        f"manifest, {len(report.refused)} refused); {report.uploaded_bytes / 1e6:.1f} MB in "
        f"{report.seconds:.1f} s"
    ]
    if outcome is not None:
        unfinished = images - outcome.completed - outcome.failed
        rate = images / wall_s if wall_s > 0 else 0.0
        lines.append(
            f"results: {outcome.completed} completed, {outcome.failed} failed, {unfinished} unfinished; "
            f"failures {outcome.failed + len(report.refused)}"
        )
        latencies = outcome.latencies_s
        lines.append(
            f"wall time {wall_s:.1f} s, {rate:.1f} images/s; upload→completed latency "
            f"p50 {percentile(latencies, 0.5):.2f} s, p90 {percentile(latencies, 0.9):.2f} s, "
            f"p99 {percentile(latencies, 0.99):.2f} s, max {max(latencies, default=float('nan')):.2f} s"
        )
    for name, reason in list(report.refused.items())[:20]:
        lines.append(f"refused {name}: {reason}")
    if len(report.refused) > 20:
        lines.append(f"... and {len(report.refused) - 20} more refused")
    return "\n".join(lines)


async def ingest(args: argparse.Namespace) -> int:
    """The whole ``peek ingest`` run; returns the exit code."""
    sources = [path for path in args.paths if path.startswith("s3://")]
    files = find_images(path for path in args.paths if not path.startswith("s3://"))
    manifest = Manifest(Path(args.manifest or DEFAULT_MANIFEST))
    show = not args.quiet
    wall = time.monotonic()
    limits = httpx.Limits(max_connections=args.concurrency * 2 + 4)
    timeout = httpx.Timeout(120.0, connect=10.0)
    report = IngestReport()
    outcome = None
    try:
        async with httpx.AsyncClient(base_url=args.api, limits=limits, timeout=timeout) as http:
            if files:
                with tqdm(total=len(files), unit="img", desc="upload", disable=not show) as bar:
                    report = await upload_files(
                        http,
                        files,
                        manifest,
                        concurrency=args.concurrency,
                        batch_size=args.batch_size,
                        reanalyze=args.reanalyze,
                        retry_for_s=args.retry_for,
                        progress=bar,
                    )
            for source in sources:
                with tqdm(unit="obj", desc=source, disable=not show) as bar:
                    bucket = await ingest_bucket(
                        http,
                        source,
                        manifest,
                        reanalyze=args.reanalyze,
                        retry_for_s=args.retry_for,
                        progress=bar,
                    )
                report.accepted.update(bucket.accepted)
                report.refused.update(bucket.refused)
                report.seconds += bucket.seconds
            if args.wait:
                with tqdm(total=len(report.ids), unit="img", desc="analyse", disable=not show) as bar:
                    outcome = await follow_results(
                        http, report.ids, timeout_s=args.wait_timeout, progress=bar
                    )
    except IngestAborted as exc:
        print(f"peek ingest: {exc}", file=sys.stderr)
        return 2
    finally:
        manifest.close()
    print(summary(report, outcome, time.monotonic() - wall), flush=True)
    if report.refused or (
        outcome and (outcome.failed or outcome.completed + outcome.failed < len(report.ids))
    ):
        return 1
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    """Entry point of ``peek ingest``."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the bar
    return asyncio.run(ingest(args))
