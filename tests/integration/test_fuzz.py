"""A bounded schemathesis run against the live API's OpenAPI document: no input gives a 500.

Runs its own API on a fresh PostgreSQL database, its own S3 bucket and its own embedded broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from infra.broker import EmbeddedBroker
from infra.kafka import ensure_topics
from tests import services
from tests.conftest import service_env


@pytest.fixture(scope="module")
def api_schema(
    postgres_server: str, redis_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    folder = tmp_path_factory.mktemp("fuzz")
    with EmbeddedBroker() as broker, services.fresh_database(postgres_server) as database_url:
        ensure_topics(broker.bootstrap, 2)
        env = service_env(
            database_url,
            redis_url,
            s3_endpoint,
            broker.bootstrap,
            folder / "data",
            bucket=f"fuzz-{uuid.uuid4().hex[:8]}",
        )
        peek = services.PeekProcesses(env, folder / "logs")
        try:
            peek.start_api()
            yield schemathesis.openapi.from_url(f"{peek.url}/openapi.json")
        finally:
            peek.stop_all()


def test_no_input_makes_a_server_error(api_schema) -> None:  # type: ignore[no-untyped-def]
    checked = []
    calls = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(timeout=30)
            calls.append(response.status_code)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
            if response.status_code >= 400:
                assert "Traceback" not in response.text, where
                assert "error" in response.json(), where

        no_server_error()
        checked.append(operation.label)
    assert len(checked) >= 5, checked  # every route of the document was exercised
    assert len(calls) >= 3 * len(checked), len(calls)
    print(f"fuzzed {len(checked)} operations with {len(calls)} requests: statuses {sorted(set(calls))}")
