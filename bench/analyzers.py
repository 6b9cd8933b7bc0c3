"""Benchmark the analyzers against the earlier Peek API's methods (bench/baseline.py), same run.

Prints, per analyzer and overall, CPU ms per image (one core: OpenCV and Tesseract single-threaded)
and the ratio to the baseline, the accuracy figures beside the baseline's on the hand labels of
../shared/corpus, OCR word recall on rendered documents (bench/_documents.py) beside the
baseline's, then the CPU time and peak memory of a 12 MP (and 24 MP) JPEG analysed whole.

    .venv/bin/python bench/analyzers.py [--quick]

--quick runs the costly baseline methods (full-image K-means on the five labelled scene-text
photos, pytesseract on those and every third image) on a subset of the corpus only, renders one
paragraph per document variant instead of three, and skips the 24 MP image. Its overall ratio
leans on the K-means subset, so quote the full run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402

from bench import baseline  # noqa: E402
from bench._corpus import Sample, big_jpeg, load_corpus, palette_delta_e, word_recall, words  # noqa: E402
from bench._documents import documents  # noqa: E402
from stream_workers.analyzers import REGISTRY, analyze_all  # noqa: E402
from stream_workers.decode import decode_image  # noqa: E402

NAMES = list(REGISTRY)


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (pytesseract runs a child)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_ours(samples: list[Sample]) -> tuple[dict, dict]:
    """Decode each image once and run every analyzer; return results and CPU seconds per step."""
    results: dict[str, dict] = {}
    seconds: dict[str, dict[str, float]] = defaultdict(dict)
    for sample in samples:
        start = cpu_seconds()
        image = decode_image(sample.data)
        seconds["decode"][sample.name] = cpu_seconds() - start
        merged: dict = {}
        for name, analyzer in REGISTRY.items():
            start = cpu_seconds()
            merged.update(analyzer.run(image))
            seconds[name][sample.name] = cpu_seconds() - start
        results[sample.name] = merged
    return results, seconds


def run_baseline(samples: list[Sample], subsets: dict[str, set[str]] | None) -> tuple[dict, dict]:
    """The earlier methods; K-means and pytesseract only on `subsets["colors"]` and
    `subsets["text"]` when given."""
    results: dict[str, dict] = defaultdict(dict)
    seconds: dict[str, dict[str, float]] = defaultdict(dict)
    for sample in samples:
        start = cpu_seconds()
        image = baseline.decode(sample.data)
        seconds["decode"][sample.name] = cpu_seconds() - start
        for name, method in baseline.ANALYZERS.items():
            if subsets is not None and name in subsets and sample.name not in subsets[name]:
                continue
            start = cpu_seconds()
            results[sample.name].update(method(image))
            seconds[name][sample.name] = cpu_seconds() - start
    return results, seconds


def mean_ms(values: dict[str, float]) -> float:
    """Mean of CPU seconds, in milliseconds."""
    return 1000 * sum(values.values()) / max(1, len(values))


def print_speed(ours: dict, base: dict) -> None:
    """Per-analyzer ms/image and the baseline ratio; each on the images both ran."""
    print("\n## Speed: CPU ms per image, one core (baseline ÷ ours = speed-up)")
    print(f"{'step':<9}{'images':>7}{'ours ms':>10}{'baseline ms':>13}{'speed-up':>10}")
    total_ours = total_base = 0.0
    for name in ["decode", *NAMES]:
        shared = base[name].keys() & ours[name].keys()
        ours_ms = mean_ms({key: ours[name][key] for key in shared})
        base_ms = mean_ms({key: base[name][key] for key in shared})
        total_ours += ours_ms
        total_base += base_ms
        print(f"{name:<9}{len(shared):>7}{ours_ms:>10.1f}{base_ms:>13.1f}{base_ms / ours_ms:>9.1f}×")
    print(f"{'overall':<9}{'':>7}{total_ours:>10.1f}{total_base:>13.1f}{total_base / total_ours:>9.1f}×")
    every = sum(mean_ms(ours[name]) for name in ["decode", *NAMES])
    print(f"(ours over all {len(ours['decode'])} corpus images: {every:.1f} ms per image)")


def print_accuracy(samples: list[Sample], ours: dict, base: dict) -> None:
    """Faces, OCR, scene and colour accuracy on the hand labels, ours beside the baseline."""
    print("\n## Accuracy against ../shared/corpus/labels.json (ours | baseline)")
    faces = [s for s in samples if s.faces is not None]
    for label, results in (("ours", ours), ("baseline", base)):
        exact = sum(results[s.name]["faces_detected"] == s.faces for s in faces)
        false = sum(max(0, results[s.name]["faces_detected"] - s.faces) for s in faces)
        missed = sum(max(0, s.faces - results[s.name]["faces_detected"]) for s in faces)
        print(
            f"faces   {label:<9} exact count {exact}/{len(faces)}, false positives {false}, missed {missed}"
        )
    texts = [s for s in samples if s.text and "text_found" in base[s.name]]
    empty = [s for s in samples if s.text == "" and "text_found" in base[s.name]]
    for label, results in (("ours", ours), ("baseline", base)):
        recalls = [word_recall(s.text or "", results[s.name]["extracted_text"]) for s in texts]
        spurious = sum(bool(results[s.name]["extracted_text"].strip()) for s in empty)
        detail = ", ".join(f"{s.name.split('.')[0]} {r:.2f}" for s, r in zip(texts, recalls, strict=False))
        print(
            f"text    {label:<9} mean word recall {sum(recalls) / max(1, len(recalls)):.2f} "
            f"on {len(texts)} labelled images ({detail}); "
            f"text claimed on {spurious}/{len(empty)} text-free images"
        )
    scenes = [s for s in samples if s.scene is not None]
    for label, results in (("ours", ours), ("baseline", base)):
        right = [results[s.name]["scene_type"] == s.scene for s in scenes]
        confidence = [results[s.name]["scene_confidence"] for s in scenes]
        brier = sum((c - r) ** 2 for c, r in zip(confidence, right, strict=False)) / len(scenes)
        mean_right = _mean([c for c, r in zip(confidence, right, strict=False) if r])
        mean_wrong = _mean([c for c, r in zip(confidence, right, strict=False) if not r])
        print(
            f"scene   {label:<9} correct {sum(right)}/{len(scenes)} "
            f"({16 * sum(right) / len(scenes):.1f} per 16); confidence when right {mean_right:.2f}, "
            f"when wrong {mean_wrong:.2f}, Brier {brier:.3f}"
        )
    print(
        "        (scene: three hand-set cue thresholds and a hand-set weight for missing cues, "
        "nothing fitted; they were chosen while looking at these same labelled images, so expect "
        "fewer right, and less separated confidences, on unseen photos)"
    )
    palettes = [s for s in samples if "dominant_colors" in base[s.name]]
    errors = [
        palette_delta_e(
            base[s.name]["dominant_colors"],
            base[s.name]["color_shares"],
            ours[s.name]["dominant_colors"],
        )
        for s in palettes
    ]
    errors.sort()
    print(
        f"colours ours vs full-image K-means on {len(errors)} images: share-weighted CIE76 ΔE "
        f"mean {_mean(errors):.2f}, median {errors[len(errors) // 2]:.2f}, max {errors[-1]:.2f}"
    )


def _mean(values: list[float]) -> float:
    """Mean, or nan when empty."""
    return sum(values) / len(values) if values else float("nan")


def print_documents(quick: bool, samples: list[Sample]) -> None:
    """OCR word recall on rendered pages (the corpus labels no document text), ours | baseline."""
    pages = documents()
    if quick:
        pages = [page for page in pages if page.name.endswith("#0")]
    print(f"\n## Documents: {len(pages)} rendered pages of known text (bench/_documents.py)")
    by_variant: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for page in pages:
        variant = page.name.rsplit(" #", 1)[0]
        for label, method in (("ours", REGISTRY["text"].run), ("baseline", baseline.text)):
            start = cpu_seconds()
            recognised = method(page.image)["extracted_text"]
            by_variant[variant][f"{label} s"].append(cpu_seconds() - start)
            by_variant[variant][label].append(word_recall(page.text, recognised))
    print(f"{'pages':<14}{'ours recall':>12}{'baseline':>10}{'ours ms':>9}{'base ms':>9}")
    for variant, figures in by_variant.items():
        print(
            f"{variant:<14}{_mean(figures['ours']):>12.2f}{_mean(figures['baseline']):>10.2f}"
            f"{1000 * _mean(figures['ours s']):>9.0f}{1000 * _mean(figures['baseline s']):>9.0f}"
        )
    every = {
        label: [r for figures in by_variant.values() for r in figures[label]]
        for label in ("ours", "baseline")
    }
    print(
        f"documents ours mean word recall {_mean(every['ours']):.2f} | baseline {_mean(every['baseline']):.2f} "
        f"on {len(pages)} pages"
    )
    named = {s.name: s for s in samples}
    if {"imageTextN.png", "imageTextR.png"} <= named.keys():
        for label, method in (("ours", REGISTRY["text"].run), ("baseline", baseline.text)):
            upright, skewed = (
                method(decode_image(named[name].data))["extracted_text"]
                for name in ("imageTextN.png", "imageTextR.png")
            )
            print(
                f"imageTextR (skewed copy) vs imageTextN, {label:<8}: {word_recall(upright, skewed):.2f} of the "
                f"{len(words(upright))} words read upright are read from the skewed copy too"
            )


def peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident memory (Linux VmHWM, MB); `reset` restarts the peak first."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_one(path: str) -> None:
    """Child-process side: analyse one image file whole, print CPU s and peak RSS (MB) as JSON."""
    cv2.setNumThreads(1)
    analyze_all(decode_image(load_corpus()[0].data))  # load engines before measuring
    data = Path(path).read_bytes()
    before = peak_rss_mb(reset=True)
    start = cpu_seconds()
    image = decode_image(data)
    analyze_all(image)
    seconds = cpu_seconds() - start
    after = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "before": before, "after": after, "shape": image.shape}))


def print_big(sizes: list[int], source: Sample) -> None:
    """Generate phone-sized JPEGs and analyse each whole in a fresh process (peak RSS is per process)."""
    print(f"\n## Large JPEGs (from {source.name}, upscaled with noise, quality 90)")
    for megapixels in sizes:
        data = big_jpeg(source.data, megapixels)
        with tempfile.NamedTemporaryFile(suffix=".jpg") as file:
            file.write(data)
            file.flush()
            child = subprocess.run(
                [sys.executable, __file__, "--measure-one", file.name],
                capture_output=True,
                text=True,
                check=True,
            )
        report = json.loads(child.stdout.strip().splitlines()[-1])
        seconds, before, after = report["seconds"], report["before"], report["after"]
        height, width = report["shape"][:2]
        target = 1.0 if megapixels <= 12 else 2.0
        verdict = "meets" if seconds < target else "MISSES"
        print(
            f"{megapixels} MP ({len(data) / 1e6:.1f} MB, decoded at {width}×{height}): "
            f"{seconds * 1000:.0f} ms CPU for decode + all analyzers ({verdict} < {target:.0f} s); "
            f"peak RSS {after:.0f} MB, {after - before:.0f} MB above the warmed-up worker"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="subset the costly baseline, 12 MP only")
    parser.add_argument("--measure-one", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_one:
        measure_one(args.measure_one)
        return
    cv2.setNumThreads(1)
    samples = load_corpus()
    subsets = None
    if args.quick:  # full-image K-means costs ~3 s a photo, pytesseract ~0.25 s
        photos = {s.name for s in samples if s.text}  # five ordinary 0.3-1.2 MP photos
        subsets = {"colors": photos, "text": photos | {s.name for s in samples[::3]}}
    print(
        f"# Peek analyzers vs the earlier methods on {len(samples)} corpus images"
        + (" (quick: baseline K-means and OCR on a subset)" if args.quick else "")
    )
    wall = time.monotonic()
    ours_results, ours_seconds = run_ours(samples)
    base_results, base_seconds = run_baseline(samples, subsets)
    print_speed(ours_seconds, base_seconds)
    print_accuracy(samples, ours_results, base_results)
    print_documents(args.quick, samples)
    print_big([12] if args.quick else [12, 24], next(s for s in samples if s.name == "scenetext05.jpg"))
    print(f"\n(bench wall time {time.monotonic() - wall:.0f} s)")


if __name__ == "__main__":
    main()
