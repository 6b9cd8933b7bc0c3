"""API metrics: the hit ratio from the lookup counters, and several processes' numbers together
(prometheus_client's multiprocess mode, as ``peek api`` runs it with PEEK_API_WORKERS > 1)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, Metric

from infra.cli import _multiprocess_metrics_dir
from ingest_api.metrics import AllProcesses, hit_ratio
from tests.services import REPO

# One API process's work: uploads answered, result lookups, and an upload still in flight when
# it stops (by dying, or by waiting for stdin to close while the test reads the folder).
API_PROCESS = textwrap.dedent(
    """
    import sys
    from ingest_api.admission import IN_FLIGHT
    from ingest_api.metrics import REQUESTS, cache_hit, cache_miss

    uploads, hits, misses = (int(value) for value in sys.argv[1:4])
    for _ in range(uploads):
        REQUESTS.labels("POST", "/api/analyze", "202").inc()
    cache_hit("local", hits)
    cache_miss("local", misses)
    cache_miss("shared", misses)
    IN_FLIGHT.inc()
    print("ready", flush=True)
    if sys.argv[4] == "stay":
        sys.stdin.read()
    """
)


def lookups(**values: float) -> list[Metric]:
    family = CounterMetricFamily("peek_result_cache_lookups", "lookups", labels=["layer", "outcome"])
    for key, value in values.items():
        layer, outcome = key.split("_")
        family.add_metric([layer, outcome], value)
    return [family]


def ratio(families: list[Metric]) -> float:
    [sample] = hit_ratio(families).samples
    return sample.value


def test_hit_ratio_counts_hits_of_either_layer_against_database_reads() -> None:
    # 6 local hits, 2 shared hits, 2 shared misses (the database answered): 8 of 10 from a cache.
    assert ratio(lookups(local_hit=6, local_miss=4, shared_hit=2, shared_miss=2)) == 0.8
    assert ratio(lookups(local_miss=3, shared_miss=3)) == 0.0
    assert ratio([]) == 0.0


def run_process(folder: Path, uploads: int, hits: int, misses: int, stay: bool) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", API_PROCESS, str(uploads), str(hits), str(misses), "stay" if stay else "exit"],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def samples(folder: Path) -> dict[str, float]:
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in AllProcesses(str(folder)).collect()
        for sample in family.samples
    }


def test_several_processes_are_reported_together(tmp_path: Path) -> None:
    gone = run_process(tmp_path, uploads=3, hits=1, misses=2, stay=False)
    assert gone.wait(30) == 0
    alive = run_process(tmp_path, uploads=4, hits=5, misses=2, stay=True)
    try:
        found = samples(tmp_path)
        # Counters: the sum over every process that ever answered, the one gone included.
        uploads = "peek_http_requests_total" + str(
            sorted({"method": "POST", "route": "/api/analyze", "status": "202"}.items())
        )
        assert found[uploads] == 7
        # In flight: only the live process's upload; the dead one's is forgotten, not stuck.
        assert found["peek_uploads_in_flight[]"] == 1
        assert not list(tmp_path.glob(f"gauge_livesum_{gone.pid}.db"))
        # Hit ratio of all lookups: 6 cache hits, 4 database reads.
        assert found["peek_result_cache_hit_ratio[]"] == 0.6
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait(30)


def test_peek_api_gives_its_processes_a_fresh_metrics_folder_and_removes_it(monkeypatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with _multiprocess_metrics_dir() as folder:
        assert folder.is_dir() and not list(folder.iterdir())
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(folder)
        (folder / "counter_1.db").write_bytes(b"numbers")
    assert not folder.exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_a_metrics_folder_named_by_the_operator_is_emptied_and_kept(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"an earlier run")
    (tmp_path / "notes.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with _multiprocess_metrics_dir() as folder:
        assert folder == tmp_path
        assert sorted(path.name for path in folder.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").exists()
