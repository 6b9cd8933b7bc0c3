"""Admission control on a real pipeline: once the analysis backlog reaches PEEK_MAX_BACKLOG, or
this API process holds PEEK_MAX_UPLOADS_IN_FLIGHT uploads, new uploads answer 503 with
Retry-After while reads keep working; once the workers drain the backlog, uploads are accepted
again.

The module runs its own API on its own fresh PostgreSQL database (the backlog is counted there)
and its own embedded broker; workers and the sink start only when the test wants the backlog
drained.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.broker import EmbeddedBroker
from infra.kafka import ensure_topics
from tests import services
from tests.conftest import service_env, wait_final

ANALYZERS = ["colors", "quality"]
MAX_BACKLOG = 3


@pytest.fixture(scope="module")
def peek(
    postgres_server: str,
    redis_url: str,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[services.PeekProcesses]:
    """An API with a backlog bound of 3 images; no workers yet."""
    folder = tmp_path_factory.mktemp("admission")
    with EmbeddedBroker() as broker, services.fresh_database(postgres_server) as database_url:
        ensure_topics(broker.bootstrap, 2)
        env = service_env(
            database_url,
            redis_url,
            s3_endpoint,
            broker.bootstrap,
            folder / "data",
            bucket=f"admission-{uuid.uuid4().hex[:8]}",
        )
        env.update(
            {
                "PEEK_ANALYZERS": ",".join(ANALYZERS),
                "PEEK_MAX_BACKLOG": str(MAX_BACKLOG),
            }
        )
        processes = services.PeekProcesses(env, folder / "logs")
        try:
            processes.start_api()
            yield processes
        finally:
            processes.stop_all()


def upload(http: httpx.Client, corpus: Path) -> httpx.Response:
    # Unique bytes per call, so that content deduplication does not hand back an earlier id.
    data = (corpus / "apple.jpg").read_bytes() + uuid.uuid4().bytes
    return http.post("/api/analyze", files={"image": ("apple.jpg", data)})


def batch(http: httpx.Client, corpus: Path, count: int = 2) -> httpx.Response:
    data = (corpus / "apple.jpg").read_bytes()
    files = [("images", (f"b{i}.jpg", data + uuid.uuid4().bytes)) for i in range(count)]
    return http.post("/api/analyze/batch", files=files)


def test_a_full_backlog_refuses_uploads_until_the_workers_drain_it(peek, corpus: Path) -> None:
    accepted: list[int] = []
    refusal: httpx.Response | None = None
    with httpx.Client(base_url=peek.url, timeout=30) as http:
        # No workers run, so every accepted image stays processing. Uploads go one at a time, so
        # the API's estimate (last count plus uploads admitted since) is exact.
        deadline = time.monotonic() + 60
        while refusal is None and time.monotonic() < deadline:
            response = upload(http, corpus)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            else:
                refusal = response
        assert refusal is not None, "uploads were never refused"
        assert len(accepted) == MAX_BACKLOG
        assert refusal.status_code == 503, refusal.text
        assert "analysis is behind" in refusal.json()["error"]
        assert int(refusal.headers["Retry-After"]) > 0
        refused_batch = batch(http, corpus)
        assert refused_batch.status_code == 503
        assert "analysis is behind" in refused_batch.json()["error"]
        assert refused_batch.headers["Retry-After"]

        # Reads are never refused for the backlog.
        assert http.get(f"/api/results/{accepted[0]}").status_code == 202
        listed = http.get("/api/results", params={"ids": ",".join(map(str, accepted))})
        assert listed.status_code == 200
        assert [result["id"] for result in listed.json()["results"]] == accepted
        assert http.get("/api/results", params={"status": "processing"}).status_code == 200
        assert http.get("/api/health").status_code == 200
        metrics = http.get("/metrics").text
        assert 'peek_uploads_refused_total{reason="backlog"}' in metrics

        # Nothing refused was recorded: the database holds exactly the accepted images.
        every = http.get("/api/results", params={"limit": 500}).json()["results"]
        assert sorted(result["id"] for result in every) == sorted(accepted)

        peek.start_workers(ANALYZERS)
        peek.start_sink()
        for image_id in accepted:
            assert wait_final(http, image_id, timeout_s=180)["status"] == "completed"
        # The count is refreshed at most once a second: accepted again within a few seconds.
        again = services.wait_for(
            lambda: (response := upload(http, corpus)).status_code == 202 and response,
            30,
            "uploads to be accepted after the backlog drained",
        )
        assert again.json()["status"] == "processing"
        assert batch(http, corpus).status_code == 202


@pytest.fixture
def one_at_a_time(peek, tmp_path: Path) -> Iterator[services.PeekProcesses]:
    """A second API on the same services that takes one upload at a time (no backlog bound); one
    process, since the bound is each process's."""
    settings = {"PEEK_MAX_BACKLOG": "0", "PEEK_MAX_UPLOADS_IN_FLIGHT": "1", "PEEK_API_WORKERS": "1"}
    api = services.PeekProcesses({**peek.env, **settings}, tmp_path / "logs")
    try:
        api.start_api()
        yield api
    finally:
        api.stop_all()


def test_one_process_refuses_uploads_beyond_its_in_flight_bound(one_at_a_time, corpus: Path) -> None:
    peek = one_at_a_time
    body = b"".join(
        [
            b"--peekboundary\r\n",
            b'Content-Disposition: form-data; name="image"; filename="slow.jpg"\r\n',
            b"Content-Type: image/jpeg\r\n\r\n",
            (corpus / "apple.jpg").read_bytes() + uuid.uuid4().bytes,
            b"\r\n--peekboundary--\r\n",
        ]
    )
    head = (
        b"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: multipart/form-data; boundary=peekboundary\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with httpx.Client(base_url=peek.url, timeout=30) as http:
        assert upload(http, corpus).status_code == 202
        slow = socket.create_connection(("127.0.0.1", peek.port), timeout=30)
        try:
            # Half a body: the API admits this upload and waits for the rest of it.
            slow.sendall(head + body[: len(body) // 2])
            services.wait_for(
                lambda: "peek_uploads_in_flight 1.0" in http.get("/metrics").text,
                30,
                "the slow upload to be admitted",
            )
            refused = upload(http, corpus)
            assert refused.status_code == 503, refused.text
            assert "already handling 1 uploads" in refused.json()["error"]
            assert refused.headers["Retry-After"] == "1"
            assert batch(http, corpus).status_code == 503
            assert http.get("/api/health").status_code == 200  # reads go on

            slow.sendall(body[len(body) // 2 :])
            answer = b""
            while chunk := slow.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
        finally:
            slow.close()
        # The slot is given back when the slow upload finishes.
        assert upload(http, corpus).status_code == 202
        metrics = http.get("/metrics").text
        assert 'peek_uploads_refused_total{reason="in_flight"}' in metrics
