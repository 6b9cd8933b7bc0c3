"""docker-compose.yml cannot run here (no Docker engine), so its wiring is checked against the code."""

from __future__ import annotations

import shlex

import yaml

from infra.cli import build_parser
from infra.settings import ALL_ANALYZERS, Settings
from tests.services import REPO

PROCESS_ENV = {"PYTHONUNBUFFERED", "OMP_THREAD_LIMIT"}


def settings_variables() -> set[str]:
    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names.update(getattr(alias, "choices", [alias]) if alias else [])
    return {name for name in names if isinstance(name, str)}


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_every_peek_service_runs_a_real_command_with_known_variables() -> None:
    services = compose()["services"]
    peek_services = {name: spec for name, spec in services.items() if spec.get("image") == "peek:latest"}
    known = settings_variables() | PROCESS_ENV
    for name, spec in peek_services.items():
        command = spec["command"] if isinstance(spec["command"], list) else shlex.split(spec["command"])
        assert command[0] == "peek", name
        build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown command or flag
        unknown = set(spec["environment"]) - known
        assert not unknown, f"{name} sets variables Peek does not read: {unknown}"
        env = spec["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] in services
        assert env["DATABASE_URL"].split("@")[1].split(":")[0] in services
        assert env["REDIS_URL"].split("//")[1].split(":")[0] in services
        assert env["S3_ENDPOINT_URL"].split("//")[1].split(":")[0] in services
        assert set(spec["depends_on"]) <= set(services)
        parsed = Settings(**env)
        assert parsed.uses_s3 and parsed.effective_database_url.startswith("postgresql+psycopg://")


def test_one_service_per_analyzer_plus_api_and_sink() -> None:
    services = compose()["services"]
    commands = [spec["command"] for spec in services.values() if spec.get("image") == "peek:latest"]
    workers = sorted(command[3] for command in commands if command[1] == "worker")
    assert workers == sorted(ALL_ANALYZERS)
    assert any(command[1] == "api" for command in commands) and any(
        command[1] == "sink" for command in commands
    )


def test_backing_services_are_kafka_kraft_postgres_redis_minio() -> None:
    services = compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["postgres"]["image"].startswith("postgres")
    assert services["redis"]["image"].startswith("redis")
    assert services["minio"]["image"].startswith("minio/minio")
    minio_env = services["minio"]["environment"]
    peek_env = services["api"]["environment"]
    assert (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"]) == (
        peek_env["R2_ACCESS_KEY_ID"],
        peek_env["R2_SECRET_ACCESS_KEY"],
    )
