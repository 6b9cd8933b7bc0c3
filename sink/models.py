"""Database models: one row per image, one row per (image, analyzer) result."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
ImageId = BigInteger().with_variant(Integer(), "sqlite")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(ImageId, primary_key=True, autoincrement=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    original_filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default=PROCESSING)
    expected_analyzers: Mapped[list[str]] = mapped_column(JSON)
    insights: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    annotated_key: Mapped[str | None] = mapped_column(String(512))
    # Copied out of insights on completion so that listings filter on indexed columns.
    scene_type: Mapped[str | None] = mapped_column(String(32))
    faces_detected: Mapped[int | None] = mapped_column(Integer)
    text_found: Mapped[bool | None] = mapped_column(Boolean)
    callback_url: Mapped[str | None] = mapped_column(Text)
    emit_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Where the latest image.uploaded event for this image sits in Kafka: the reconciler compares it
    # with each analyzer's committed offset to tell an event still queued from one taken and lost.
    event_partition: Mapped[int | None] = mapped_column(Integer)
    event_offset: Mapped[int | None] = mapped_column(BigInteger)
    # When that event was sent (taken just before sending: a restarted memory-only broker holds
    # only events sent after it started). None on rows from before migration 0005: created_at then.
    emitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The API key that uploaded the image; None when access control was off.
    owner_key_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_images_status_updated", "status", "updated_at"),
        Index("ix_images_created_id", "created_at", "id"),
        # Listings filter on one column and page newest first: (filter, created_at, id) serves both.
        Index("ix_images_status_created", "status", "created_at", "id"),
        Index("ix_images_scene_created", "scene_type", "created_at", "id"),
        Index("ix_images_faces_created", "faces_detected", "created_at", "id"),
        Index("ix_images_text_created", "text_found", "created_at", "id"),
    )


class ApiKey(Base):
    """A client's API key; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    # The first characters of the secret, shown by `peek keys list` to tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    rate_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AnalysisResult(Base):
    __tablename__ = "analysis_results"

    image_id: Mapped[int] = mapped_column(
        ImageId, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    analyzer: Mapped[str] = mapped_column(String(32), primary_key=True)
    analyzer_version: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(8))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    elapsed_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
