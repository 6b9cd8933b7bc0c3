"""The alembic migrations build exactly the schema the models describe, on PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sink.db import make_engine, migrate
from sink.models import Base
from tests.services import fresh_database


def schema_drift(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        migrate(engine)
        migrate(engine)  # a second run is a no-op
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def test_migrations_match_the_models_on_postgresql(postgres_server: str) -> None:
    with fresh_database(postgres_server) as url:
        assert schema_drift(url.replace("postgresql://", "postgresql+psycopg://")) == []


def test_migrations_match_the_models_on_sqlite(tmp_path: Path) -> None:
    assert schema_drift(f"sqlite:///{tmp_path / 'peek.db'}") == []
