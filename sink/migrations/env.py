"""Alembic environment: migrations run on the connection Peek hands over (see sink.db.migrate)."""

from alembic import context

from sink.models import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through sink.db.migrate")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
