"""End to end through ``peek up``: upload → completed, against the analyzers alone and the earlier API.

Three rates from one run, on the same images (the corpus, re-encoded as JPEG, each copy made
distinct with a JPEG comment so deduplication never short-cuts):

1. the earlier Peek API's sequential method (bench/baseline.py) per image, times the cores, as a
   perfectly parallel pool of it would get;
2. Peek's analyzers alone: decode once and every analyzer, in a pool of one process per core
   (the target's reference); and, to show where the pipeline's cost goes, each analyzer decoding
   the image for itself at its own size, as the workers must;
3. the whole pipeline: ``peek up`` on embedded defaults (embedded broker, SQLite, local storage),
   images pushed through ``POST /api/analyze/batch``, the clock stopped when the database says
   the last one is completed; for each ``--worker-processes`` setting given.

Prints the pipeline's ratio to (1) (target ≥ 10×) and to (2) (target ≥ 0.85; (2) is measured before and
after each pipeline run and the mean used, so drift in the machine's speed cancels), the CPU that each
kind of process spends per image (where the pipeline's own cost goes), and its peak memory.

``--memory`` instead runs one ``peek up`` through 1,000 and then 10,000 small distinct images, 500
at a time (the corpus shrunk to 96 px: the run is about counts, not pixels; about 8 minutes here,
where the colour analyzer's clustering, a cost per image whatever its size, sets the pace) and
prints each kind of process's peak memory at both counts and their ratio: flat means ≈ 1.

``--repeat N`` runs each setting N times, each run bracketed by its own reference measurements, and
prints the median ratio: on a machine whose speed drifts by 10-20% over minutes, one run's ratio
moves by several points.

    .venv/bin/python bench/pipeline.py [--quick] [--images 1000 10000] [--worker-processes 1 2 1,text=2]
    .venv/bin/python bench/pipeline.py --images 1000 --worker-processes 1,text=2,faces=2 --repeat 3
    .venv/bin/python bench/pipeline.py --memory
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from bench import baseline  # noqa: E402
from bench._corpus import load_corpus  # noqa: E402
from bench._procs import children_of, label, peak_rss_mb, tree_cpu, tree_peaks  # noqa: E402
from bench.ingest import push, variant  # noqa: E402
from infra.broker import free_port  # noqa: E402
from infra.settings import Settings, embedded_environment  # noqa: E402

CORES = os.cpu_count() or 1
DEFAULT_PROCESSES = Settings.model_fields["worker_processes"].default


def corpus_jpegs() -> list[bytes]:
    """Every corpus image as an RGB JPEG (quality 92), so each copy can carry a distinct comment."""
    images = []
    for sample in load_corpus():
        buffer = io.BytesIO()
        Image.open(io.BytesIO(sample.data)).convert("RGB").save(buffer, "JPEG", quality=92)
        images.append(buffer.getvalue())
    return images


def baseline_seconds(images: list[bytes]) -> float:
    """Wall seconds per image of the earlier sequential method, one image after another."""
    import cv2

    cv2.setNumThreads(1)
    started = time.perf_counter()
    for data in images:
        picture = baseline.decode(data)
        for method in baseline.ANALYZERS.values():
            method(picture)
    return (time.perf_counter() - started) / len(images)


def _analyze_one(data: bytes) -> None:
    from stream_workers.analyzers import analyze_all
    from stream_workers.decode import decode_image

    analyze_all(decode_image(data))


def _warm_pool() -> None:
    import cv2

    cv2.setNumThreads(1)
    from stream_workers.analyzers import REGISTRY  # noqa: F401 - loads the models once


def _analyze_each(data: bytes) -> None:
    from stream_workers.analyzers import REGISTRY
    from stream_workers.runner import analyze_bytes

    width, height = Image.open(io.BytesIO(data)).size
    for name in REGISTRY:
        analyze_bytes(name, data, width, height)


def analyzers_alone_rate(images: list[bytes], each_decodes: bool = False) -> float:
    """Images/s of decode + every analyzer in a pool of one process per core (no I/O, no Kafka);
    with ``each_decodes``, every analyzer decodes the image itself at its own size."""
    work = _analyze_each if each_decodes else _analyze_one
    with ProcessPoolExecutor(CORES, initializer=_warm_pool) as pool:
        list(pool.map(work, images[:CORES]))  # warm up
        started = time.perf_counter()
        list(pool.map(work, images, chunksize=1))
        return len(images) / (time.perf_counter() - started)


def reference_rates(sample: list[bytes]) -> tuple[float, float]:
    """The analyzers alone: (decoding once, each decoding for itself), in images/s."""
    return analyzers_alone_rate(sample), analyzers_alone_rate(sample, each_decodes=True)


class PeekUp:
    """``peek up`` on a fresh data folder, as a process group."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        clean = embedded_environment(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "up", "--port", str(self.port), "--data-dir", str(data_dir)],
            env={**clean, "PEEK_LOG_LEVEL": "warning", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"peek up did not come up; see {data_dir / 'logs'}")

    def finished(self) -> tuple[int, int]:
        """(final images, failed images) by the database."""
        with sqlite3.connect(self.data_dir / "peek.db", timeout=30) as db:
            final, failed = db.execute(
                "SELECT count(*) FILTER (WHERE status != 'processing'), count(*) FILTER (WHERE status = 'failed')"
                " FROM images"
            ).fetchone()
        return final, failed

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def warm_up(peek: PeekUp, images: list[bytes]) -> None:
    """A few images through every worker first, so models are loaded and groups are assigned."""
    asyncio.run(push(peek.url, [variant(data, -1 - i) for i, data in enumerate(images[:4])], 2, 4))
    deadline = time.monotonic() + 300
    while peek.finished()[0] < 4 and time.monotonic() < deadline:
        time.sleep(0.5)


def run_pipeline(
    images: list[bytes], count: int, worker_processes: str, folder: Path
) -> tuple[float, int, int, dict[int, tuple[str, float]]]:
    """Seconds from first upload to last completed, images finished, failed, and peak memory."""
    # A fresh folder for every run: a second run on the first one's database would find every
    # upload already there (deduplicated) and have nothing to analyse.
    setting = worker_processes.replace(",", "-").replace("=", "")
    data_dir = Path(tempfile.mkdtemp(prefix=f"up-{count}-{setting}-", dir=folder)) / "data"
    peek = PeekUp(data_dir, {"PEEK_WORKER_PROCESSES": worker_processes})
    try:
        warm_up(peek, images)
        done_before = peek.finished()[0]
        cpu_before = tree_cpu(peek.process.pid)
        uploads = [variant(images[i % len(images)], i) for i in range(count)]
        started = time.perf_counter()
        asyncio.run(push(peek.url, uploads, 2, 16))
        deadline = time.monotonic() + 60 + count * 2
        while time.monotonic() < deadline:
            final, failed = peek.finished()
            if final - done_before >= count:
                break
            time.sleep(0.25)
        seconds = time.perf_counter() - started
        peaks = tree_peaks(peek.process.pid)
        print_cpu_shares(cpu_before, tree_cpu(peek.process.pid), final - done_before)
        return seconds, final - done_before, failed, peaks
    finally:
        peek.stop()


def print_cpu_shares(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], images: int
) -> None:
    """CPU ms per image of each kind of process during the run: where the pipeline's cost goes."""
    by_label: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        used = seconds - before.get(pid, (name, 0.0))[1]
        by_label[name] = by_label.get(name, 0.0) + used
    total = sum(by_label.values())
    shares = sorted(by_label.items(), key=lambda item: -item[1])
    print(
        f"  CPU per image: {total * 1000 / max(1, images):.0f} ms in all; "
        + ", ".join(
            f"{name} {seconds * 1000 / max(1, images):.1f}" for name, seconds in shares if seconds > 0
        )
    )


BROKER = "embedded broker"
# Image counts of the memory run, and uploads per push (bounds the bench's own memory).
MEMORY_COUNTS = (1000, 10000)
MEMORY_SIDE = 96
MEMORY_CHUNK = 500


def small_jpegs(images: list[bytes], side: int = MEMORY_SIDE) -> list[bytes]:
    """The corpus images shrunk so that their longest side is ``side`` pixels, as JPEG."""
    small = []
    for data in images:
        picture = Image.open(io.BytesIO(data))
        picture.thumbnail((side, side))
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        small.append(buffer.getvalue())
    return small


def process_kind(pid: int) -> str:
    """A process's kind: the ``peek`` sub-command (and analyzer), an analysis pool by its worker,
    or the embedded broker."""
    name = label(pid)
    if name == "analyzer pool process":
        try:
            parent = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return name
        return f"pool of {label(parent)}"
    if name.startswith("tansu"):
        return BROKER
    return name.split()[0] if name.split()[0] in ("api", "up") else name


def peaks_by_kind(root: int) -> dict[str, float]:
    """The largest peak RSS (MB) among the processes of each kind under ``root``."""
    peaks: dict[str, float] = {}
    for pid in [root, *children_of(root)]:
        kind = process_kind(pid)
        peaks[kind] = max(peaks.get(kind, 0.0), peak_rss_mb(pid))
    return peaks


def run_memory(images: list[bytes], folder: Path, counts: tuple[int, ...] = MEMORY_COUNTS) -> None:
    """One ``peek up`` through ``counts`` images in turn; peak memory of each kind at each count."""
    small = small_jpegs(images)
    print(
        f"# Memory: one peek up through {' then '.join(f'{count:,}' for count in counts)} distinct images "
        f"({len(small)} corpus images shrunk to {MEMORY_SIDE} px, {sum(map(len, small)) // len(small) // 1024} KB "
        f"on average)"
    )
    peek = PeekUp(folder / "up-memory", {})
    try:
        warm_up(peek, small)
        done_before = peek.finished()[0]
        pushed, refused, started = 0, 0, time.perf_counter()
        peaks: list[dict[str, float]] = []
        for count in counts:
            # A chunk at a time, each finished before the next: the backlog stays the same small
            # size, so what the peaks compare is the images gone through, not the queue's length.
            while pushed < count:
                chunk = [
                    variant(small[i % len(small)], i)
                    for i in range(pushed, min(count, pushed + MEMORY_CHUNK))
                ]
                refused += asyncio.run(push(peek.url, chunk, 2, 16))[2]
                pushed += len(chunk)
                deadline = time.monotonic() + 120 + len(chunk)
                while (finished := peek.finished())[0] - done_before < pushed - refused:
                    if time.monotonic() > deadline:
                        raise SystemExit(
                            f"only {finished[0] - done_before} of {pushed} images finished in time"
                        )
                    time.sleep(0.5)
            seconds = time.perf_counter() - started
            print(
                f"{count:,} images finished ({finished[1]} failed, {refused} refused) after {seconds:.0f} s "
                f"= {count / seconds:.1f} images/s"
            )
            peaks.append(peaks_by_kind(peek.process.pid))
    finally:
        peek.stop()
    first, last = peaks[0], peaks[-1]
    print(f"  {'peak RSS, MB':<22}" + "".join(f"{f'at {count:,}':>10}" for count in counts) + "     ratio")
    kinds = sorted((kind for kind in last if kind != BROKER), key=lambda kind: -last[kind])
    for kind in [*kinds, BROKER]:
        ratio = last.get(kind, 0.0) / max(first.get(kind, 0.0), 0.001)
        print(f"  {kind:<22}" + "".join(f"{each.get(kind, 0.0):10.0f}" for each in peaks) + f"{ratio:10.2f}")
    flat = max(last[kind] / max(first.get(kind, 0.0), 0.001) for kind in kinds)
    print(
        f"  Peek's own processes: largest growth from {counts[0]:,} to {counts[-1]:,} images ×{flat:.2f}. "
        f"The {BROKER} (Tansu, memory-only) keeps every event it is sent, in memory, for as long as it "
        "runs: it grows with the events by design. A real Kafka (KAFKA_BOOTSTRAP_SERVERS) keeps them on "
        "disk with a retention limit."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="150 images through the pipeline")
    parser.add_argument("--images", type=int, nargs="+", default=None, help="image counts to push")
    parser.add_argument(
        "--worker-processes",
        nargs="+",
        default=None,
        help="PEEK_WORKER_PROCESSES settings to compare (default: 1, 2 and the default setting)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each setting, each bracketed by its own reference measurements; the median ratio is printed",
    )
    parser.add_argument(
        "--memory", action="store_true", help="peak memory from 1,000 to 10,000 images (no rates)"
    )
    args = parser.parse_args(argv)
    if args.memory:
        with tempfile.TemporaryDirectory(prefix="peek-bench-memory-") as folder:
            run_memory(corpus_jpegs(), Path(folder))
        return
    counts = args.images or ([150] if args.quick else [1000, 10000])
    worker_settings = args.worker_processes or ["1", "2", DEFAULT_PROCESSES]
    images = corpus_jpegs()
    print(
        f"# Pipeline vs analyzers alone vs the earlier sequential method: {len(images)} corpus images "
        f"as JPEG, {CORES} cores"
    )
    # Every corpus image in every mode: the ratios compare rates on the same images.
    per_image = baseline_seconds(images)
    baseline_rate = CORES / per_image
    print(
        f"baseline (earlier API, sequential) {per_image * 1000:8.0f} ms/image on {len(images)} images "
        f"→ × {CORES} cores = {baseline_rate:6.2f} images/s"
    )
    # The machine's speed drifts over minutes (other tenants, heat): the analyzers alone are measured
    # before the first pipeline run and again after each one, and every run is compared with the
    # mean of the two measurements around it.
    sample = images * (2 if args.quick else 8)
    alone, each = reference_rates(sample)
    print(
        f"analyzers alone ({CORES}-process pool)  {alone:6.2f} images/s ({alone / baseline_rate:.1f}× baseline)"
    )
    print(
        f"  the same, each analyzer decoding for itself (as the workers do): {each:6.2f} images/s "
        f"({each / alone:.2f} of decoding once)"
    )
    with tempfile.TemporaryDirectory(prefix="peek-bench-pipeline-") as folder:
        for processes in worker_settings:
            for count in counts:
                ratios: list[tuple[float, float]] = []
                for _ in range(args.repeat):
                    (alone, each), run_ratios = _bracketed_run(
                        images, count, processes, Path(folder), sample, baseline_rate, (alone, each)
                    )
                    ratios.append(run_ratios)
                if args.repeat > 1:
                    print(
                        f"  median of {args.repeat} runs, PEEK_WORKER_PROCESSES={processes}, {count} images: "
                        f"{statistics.median(r for r, _ in ratios):.3f} of analyzers alone "
                        f"({', '.join(f'{r:.3f}' for r, _ in ratios)}; target ≥ 0.85), "
                        f"{statistics.median(e for _, e in ratios):.3f} of them decoding for themselves"
                    )


def _bracketed_run(
    images: list[bytes],
    count: int,
    processes: str,
    folder: Path,
    sample: list[bytes],
    baseline_rate: float,
    before: tuple[float, float],
) -> tuple[tuple[float, float], tuple[float, float]]:
    """One pipeline run, compared with the mean of the reference rates (alone, each decoding)
    measured ``before`` it and after it. Returns the rates after, and the run's ratios to both."""
    alone, each = before
    seconds, finished, failed, peaks = run_pipeline(images, count, processes, folder)
    alone_after, each_after = reference_rates(sample)
    reference, reference_each = (alone + alone_after) / 2, (each + each_after) / 2
    rate = finished / seconds
    print(
        f"pipeline, PEEK_WORKER_PROCESSES={processes}, {count} images: {finished} finished "
        f"({failed} failed) in {seconds:.1f} s = {rate:.2f} images/s → "
        f"{rate / baseline_rate:.1f}× baseline (target ≥ 10×), "
        f"{rate / reference:.3f} of analyzers alone (target ≥ 0.85; {rate / reference_each:.3f} "
        "of them decoding for themselves)"
    )
    print(
        f"  analyzers alone measured again after this run: {alone_after:.2f} images/s "
        f"({each_after:.2f} each decoding); the ratios use the means with the run before, "
        f"{reference:.2f} ({reference_each:.2f})"
    )
    biggest = sorted(peaks.values(), key=lambda item: -item[1])
    total = sum(mb for _, mb in biggest)
    print(
        f"  peak RSS at {count} images: total {total:.0f} MB; "
        + ", ".join(f"{name} {mb:.0f}" for name, mb in biggest if mb > 0)
    )
    return (alone_after, each_after), (rate / reference, rate / reference_each)


if __name__ == "__main__":
    main()
