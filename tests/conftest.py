"""Fixtures: real services (see tests/services.py) and a running Peek pipeline on them."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import services

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

ANALYZERS = ["colors", "quality", "faces", "text", "scene"]
FINAL = ("completed", "failed")
WEBHOOK_SECRET = "peek-test-webhook-secret"


@pytest.fixture(scope="session")
def corpus() -> Path:
    return services.CORPUS


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with services.kafka_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    with services.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def database_url(postgres_server: str) -> Iterator[str]:
    with services.fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_server() as url:
        yield url  # shared safely: every environment has its own key namespace (PEEK_REDIS_NAMESPACE)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with services.s3_server() as url:
        yield url


@pytest.fixture
def s3(s3_endpoint: str):  # type: ignore[no-untyped-def]
    """A boto3 client of the tests' S3 endpoint."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )


def service_env(
    database_url: str,
    redis_url: str,
    s3_endpoint: str,
    kafka_bootstrap: str,
    data_dir: Path,
    bucket: str = "peek-test",
) -> dict[str, str]:
    """The environment a Peek process gets in the integration tests."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "S3_ENDPOINT_URL": s3_endpoint,
        "R2_BUCKET_NAME": bucket,
        "R2_ACCESS_KEY_ID": "test",
        "R2_SECRET_ACCESS_KEY": "test",
        "S3_REGION": "us-east-1",
        "PEEK_DATA_DIR": str(data_dir),
        # Each environment has its own database, so it gets its own Redis keys too.
        "PEEK_REDIS_NAMESPACE": f"peek-test-{uuid.uuid4().hex[:8]}",
        "PEEK_KAFKA_SESSION_TIMEOUT_S": "6",
        "PEEK_RECONCILE_INTERVAL_S": "2",
        "PEEK_TOPIC_PARTITIONS": "4",
        "OMP_THREAD_LIMIT": "1",
        # Webhooks: signed with a known secret; short timeouts and pauses keep retry tests quick.
        "PEEK_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PEEK_WEBHOOK_TIMEOUT_S": "2",
        "PEEK_WEBHOOK_BACKOFF_S": "0.5",
    }


@pytest.fixture(scope="session")
def pipeline_env(
    database_url: str,
    redis_url: str,
    s3_endpoint: str,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    return service_env(
        database_url, redis_url, s3_endpoint, kafka_bootstrap, tmp_path_factory.mktemp("peek-data")
    )


@pytest.fixture(scope="session")
def pipeline(
    pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[services.PeekProcesses]:
    """API, one worker per analyzer and the sink, on PostgreSQL, Redis, S3 and a Kafka broker."""
    from infra.kafka import ensure_topics

    ensure_topics(pipeline_env["KAFKA_BOOTSTRAP_SERVERS"], int(pipeline_env["PEEK_TOPIC_PARTITIONS"]))
    peek = services.PeekProcesses(pipeline_env, tmp_path_factory.mktemp("logs"))
    try:
        peek.start_api()
        peek.start_workers(ANALYZERS)
        peek.start_sink()
        yield peek
    finally:
        peek.stop_all()


@pytest.fixture(scope="session")
def client(pipeline: services.PeekProcesses) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pipeline.url, timeout=30) as http:
        yield http


def wait_final(http: httpx.Client, image_id: int, timeout_s: float = 90) -> dict[str, Any]:
    """Poll GET /api/results/:id until the image is completed or failed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = http.get(f"/api/results/{image_id}")
        if response.status_code == 200 and response.json()["status"] in FINAL:
            return response.json()  # type: ignore[no-any-return]
        assert response.status_code == 202, response.text
        time.sleep(0.3)
    raise TimeoutError(f"image {image_id} not final after {timeout_s} s")
