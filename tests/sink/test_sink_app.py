"""The sink process on real PostgreSQL, Redis, S3 and its own embedded broker: partials merged in
batches are acknowledged only once their batch is committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from infra.broker import EmbeddedBroker
from infra.kafka import EventProducer, ensure_topics
from schemas.events import AnalysisPartial
from schemas.topics import ANALYSIS_PARTIAL
from sink.db import make_engine, make_sessionmaker, migrate
from sink.models import AnalysisResult, Image
from tests.conftest import service_env
from tests.services import REPO, fresh_database, wait_for
from tests.sink.crashing_sink import CRASH_EXIT_CODE

ANALYZERS = ["colors", "quality", "faces", "text", "scene"]


@pytest.fixture
def sink_env(postgres_server: str, pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    # Its own database and broker: the sink's consumer group must not meet the shared pipeline's.
    with fresh_database(postgres_server) as database_url, EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, 2)
        env = service_env(
            database_url,
            pipeline_env["REDIS_URL"],
            pipeline_env["S3_ENDPOINT_URL"],
            broker.bootstrap,
            tmp_path / "data",
        )
        yield {**env, "PEEK_TOPIC_PARTITIONS": "2"}


def start(module: str, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def test_a_sink_dying_mid_batch_loses_no_partial(sink_env: dict[str, str], tmp_path: Path) -> None:
    engine = make_engine(sink_env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        image = Image(
            storage_key=f"originals/test/{uuid.uuid4().hex}.png",
            content_type="image/png",
            size_bytes=10,
            width=10,
            height=10,
            sha256=uuid.uuid4().hex,
            expected_analyzers=ANALYZERS,
        )
        session.add(image)
        session.flush()
        image_id = image.id
    producer = EventProducer(sink_env["KAFKA_BOOTSTRAP_SERVERS"])
    for analyzer in ANALYZERS:
        partial = AnalysisPartial(
            image_id=image_id, analyzer=analyzer, analyzer_version="1", status="ok", result={}, elapsed_ms=1.0
        )
        producer.send_sync(ANALYSIS_PARTIAL, str(image_id), partial.to_bytes())
    producer.close()

    def count_results() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).where(AnalysisResult.image_id == image_id)) or 0

    def status() -> str:
        with sessions() as session:
            return session.scalars(select(Image.status).where(Image.id == image_id)).one()

    # Failure injection (tests/sink/crashing_sink.py): the first sink dies holding its first batch.
    crash_log = tmp_path / "crashing-sink.log"
    crashing = start("tests.sink.crashing_sink", sink_env, crash_log)
    try:
        assert crashing.wait(120) == CRASH_EXIT_CODE, crash_log.read_text(errors="replace")[-3000:]
    finally:
        stop(crashing)
    assert "holding a batch of" in crash_log.read_text()
    assert count_results() == 0 and status() == "processing"

    sink_log = tmp_path / "sink.log"
    sink = start("infra.cli", sink_env, sink_log, "sink")
    try:
        wait_for(lambda: status() == "completed", 120, "the image to complete after the sink's restart")
    except TimeoutError:
        pytest.fail(
            f"partials were lost with the crashed batch\n{sink_log.read_text(errors='replace')[-3000:]}"
        )
    finally:
        stop(sink)
        engine.dispose()
    assert count_results() == len(ANALYZERS)
