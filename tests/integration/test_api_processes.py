"""`peek api` with two uvicorn processes (PEEK_API_WORKERS=2) on a new SQLite database: both
start (the schema migrated once, before them), both serve, and /metrics answers with the numbers
of both whichever process is asked.

Every request goes on a new connection, so that the kernel hands requests to either process.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from infra.kafka import ensure_topics
from infra.settings import SERVICE_VARIABLES
from tests import services

pytestmark = pytest.mark.integration

UPLOAD_ROUTE = ("POST", "/api/analyze", "202")
READ_ROUTE = ("GET", "/api/results/{image_id}", "202")
ROUND = 20


@pytest.fixture(scope="module")
def api(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.PeekProcesses]:
    """Two API processes on embedded defaults (SQLite, local storage, in-process cache), writing
    their metrics to a folder the test can look into."""
    folder = tmp_path_factory.mktemp("api-processes")
    metrics_dir = folder / "metrics"
    metrics_dir.mkdir()
    # An earlier run's numbers: `peek api` must start from an empty folder.
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")
    ensure_topics(kafka_bootstrap, 2)
    env = {name: "" for name in SERVICE_VARIABLES}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "PEEK_DATA_DIR": str(folder / "data"),
            "PEEK_API_WORKERS": "2",
            "PEEK_TOPIC_PARTITIONS": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
    )
    processes = services.PeekProcesses(env, folder / "logs")
    try:
        processes.start_api()
        yield processes
    finally:
        processes.stop_all()


def per_process(metrics_dir: Path, route: tuple[str, str, str]) -> dict[str, float]:
    """Requests of ``route`` each API process answered, from its own file (keyed by its pid)."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                labels = (
                    sample.labels.get("method"),
                    sample.labels.get("route"),
                    sample.labels.get("status"),
                )
                if sample.name == "peek_http_requests_total" and labels == route:
                    counts[path.stem.removeprefix("counter_")] = sample.value
    return counts


def reported(text: str, route: tuple[str, str, str]) -> float:
    method, path, status = route
    line = f'peek_http_requests_total{{method="{method}",route="{path}",status="{status}"}} '
    values = [float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)]
    return values[0] if values else 0.0


def fresh(method: str, url: str, **kwargs: object) -> httpx.Response:
    """One request on its own connection."""
    with httpx.Client(timeout=30) as http:
        return http.request(method, url, **kwargs)  # type: ignore[arg-type]


def test_metrics_are_the_sum_over_the_api_processes(api: services.PeekProcesses, corpus: Path) -> None:
    metrics_dir = Path(api.env["PROMETHEUS_MULTIPROC_DIR"])
    assert not (metrics_dir / "counter_999999.db").exists()
    data = (corpus / "apple.jpg").read_bytes()

    def upload(_: int) -> int:
        response = fresh(
            "POST", f"{api.url}/api/analyze", files={"image": ("apple.jpg", data + uuid.uuid4().bytes)}
        )
        assert response.status_code == 202, response.text
        return int(response.json()["id"])

    # Uploads in rounds until both processes have answered some (the kernel picks; 10 rounds of
    # 20 concurrent requests leave both idle processes out only by a freak).
    ids: list[int] = []
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            ids += pool.map(upload, range(ROUND))
            if len(per_process(metrics_dir, UPLOAD_ROUTE)) == 2:
                break
        uploads = per_process(metrics_dir, UPLOAD_ROUTE)
        assert len(uploads) == 2, f"one process answered every upload: {uploads}\n{api.logs()}"
        assert sum(uploads.values()) == len(ids) and min(uploads.values()) < len(ids)
        # Nothing analyses them, so every read answers 202 (processing).
        statuses = list(pool.map(lambda image_id: fresh("GET", f"{api.url}/api/results/{image_id}"), ids))
    assert {response.status_code for response in statuses} == {202}

    # Asked several times on new connections, so each process answers some: always the total.
    for _ in range(8):
        text = fresh("GET", f"{api.url}/metrics").text
        assert reported(text, UPLOAD_ROUTE) == len(ids), text
        assert reported(text, READ_ROUTE) == len(ids), text
        assert "peek_uploads_in_flight 0.0" in text
        assert 'peek_consumer_lag{group="peek-sink"' in text
        assert text.count("# TYPE peek_result_cache_hit_ratio gauge") == 1
        assert text.count("# TYPE peek_consumer_lag gauge") == 1
