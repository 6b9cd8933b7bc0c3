"""Event models: one pydantic model per event, the single source of the event contract.

Changes are additive within a ``schema_version``: new fields are optional, old fields stay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Common base: unknown fields from newer producers are kept, not rejected."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ImageUploaded(Event):
    """An image is stored and waits for analysis (topic ``image.uploaded``, key = image id)."""

    id: int = Field(description="Image id, as in the REST API")
    storage_key: str = Field(description="Object key of the original in Peek's storage")
    content_type: str
    size: int = Field(description="Size of the original in bytes")
    width: int
    height: int
    sha256: str
    expected_analyzers: list[str] = Field(
        description="Analyzers that should run; a worker whose analyzer is not listed skips the event"
    )
    uploaded_at: datetime = Field(default_factory=utc_now)
    attempt: int = Field(0, description="0 for the upload, n for the n-th re-emission by the reconciler")


class AnalysisPartial(Event):
    """One analyzer's result for one image (topic ``image.analysis.partial``)."""

    image_id: int
    analyzer: str
    analyzer_version: str
    status: Literal["ok", "error"]
    result: dict[str, Any] | None = None
    error: str | None = None
    elapsed_ms: float = 0.0
    produced_at: datetime = Field(default_factory=utc_now)


class FaceBox(BaseModel):
    """A face's bounding box in original-image pixels."""

    model_config = ConfigDict(extra="allow")

    x: int
    y: int
    width: int
    height: int


class Insights(BaseModel):
    """The merged insight record; a field is null when its analyzer failed. Analyzers may add
    fields (e.g. ``text_regions``, ``color_shares``); subscribers should ignore unknown ones."""

    model_config = ConfigDict(extra="allow")

    dominant_colors: list[str] | None = Field(None, description="Hex colours '#rrggbb', most common first")
    brightness: float | None = Field(None, description="Mean luma, 0-255")
    faces_detected: int | None = None
    face_locations: list[FaceBox] | None = None
    text_found: bool | None = None
    extracted_text: str | None = None
    word_count: int | None = None
    sharpness_score: float | None = None
    blur_level: str | None = Field(None, description="low, medium or high")
    contrast_score: float | None = None
    quality_score: float | None = Field(None, description="Overall quality, 0-100")
    scene_type: str | None = None
    scene_confidence: float | None = Field(None, description="0-1")


class AnalyzerReport(BaseModel):
    """How one analyzer fared on the image."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "error"]
    version: str
    elapsed_ms: float
    error: str | None = None


class AnalysisCompleted(Event):
    """The full result of an image, exactly as ``GET /api/results/:id`` returns it
    (topic ``image.analysis.completed``)."""

    id: int = Field(description="Image id, as in the REST API")
    status: Literal["completed", "failed"]
    insights: Insights | None = Field(None, description="Present when status is completed")
    error: str | None = Field(
        None, description="Why the image failed, or why some analyzers gave up on a completed one"
    )
    analyzers: dict[str, AnalyzerReport] = Field(
        default_factory=dict, description="Per-analyzer status, version, elapsed ms and error"
    )
    created_at: datetime | None = None
    completed_at: datetime | None = None
    public_url: str | None = None

    @field_serializer("created_at", "completed_at")
    def _iso(self, moment: datetime | None) -> str | None:
        """Written as the REST API writes it (``+00:00``), so the event equals the REST body."""
        return moment.isoformat() if moment else None


EVENT_MODELS: dict[str, type[Event]] = {
    "image.uploaded": ImageUploaded,
    "image.analysis.partial": AnalysisPartial,
    "image.analysis.completed": AnalysisCompleted,
}
