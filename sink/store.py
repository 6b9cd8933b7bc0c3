"""The insight store: image rows, idempotent merging of partial results, and result views.

Every function takes a SQLAlchemy session and leaves committing to the caller, except where the
docstring says otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from schemas.events import AnalysisPartial, ImageUploaded
from sink.models import COMPLETED, FAILED, PROCESSING, AnalysisResult, Image, utc_now

# Every insight field of the REST contract, null when its analyzer failed.
INSIGHT_FIELDS = (
    "dominant_colors",
    "brightness",
    "faces_detected",
    "face_locations",
    "text_found",
    "extracted_text",
    "word_count",
    "sharpness_score",
    "blur_level",
    "contrast_score",
    "quality_score",
    "scene_type",
    "scene_confidence",
)


def uploaded_event(image: Image, analyzers: list[str] | None = None, attempt: int = 0) -> ImageUploaded:
    """The ``image.uploaded`` event for an image row."""
    return ImageUploaded(
        id=image.id,
        storage_key=image.storage_key,
        content_type=image.content_type,
        size=image.size_bytes,
        width=image.width,
        height=image.height,
        sha256=image.sha256,
        expected_analyzers=analyzers if analyzers is not None else list(image.expected_analyzers),
        uploaded_at=_aware(image.created_at),
        attempt=attempt,
    )


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; Peek stores UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    return _aware(moment).isoformat() if moment else None


def record_partials(session: Session, partials: Sequence[AnalysisPartial]) -> None:
    """Store analyzers' results in one statement; a duplicate (same image and analyzer, already
    stored or earlier in ``partials``) changes nothing."""
    if not partials:
        return
    now = utc_now()
    rows = [
        {
            "image_id": partial.image_id,
            "analyzer": partial.analyzer,
            "analyzer_version": partial.analyzer_version,
            "status": partial.status,
            "result": partial.result,
            "error": partial.error,
            "elapsed_ms": partial.elapsed_ms,
            "created_at": now,
        }
        for partial in partials
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(AnalysisResult).on_conflict_do_nothing(), rows)


def results_of(session: Session, image_id: int) -> dict[str, AnalysisResult]:
    return results_of_images(session, [image_id]).get(image_id, {})


def results_of_images(session: Session, image_ids: Iterable[int]) -> dict[int, dict[str, AnalysisResult]]:
    """Each image's results by analyzer, in one query; images without results are absent."""
    found: dict[int, dict[str, AnalysisResult]] = {}
    ids = list(image_ids)
    if not ids:
        return found
    for row in session.scalars(select(AnalysisResult).where(AnalysisResult.image_id.in_(ids))):
        found.setdefault(row.image_id, {})[row.analyzer] = row
    return found


def analyzers_reported(session: Session, image_ids: Iterable[int]) -> defaultdict[int, set[str]]:
    """The analyzers each image has results from (names only: cheaper than loading the results)."""
    reported: defaultdict[int, set[str]] = defaultdict(set)
    ids = list(image_ids)
    if ids:
        rows = session.execute(
            select(AnalysisResult.image_id, AnalysisResult.analyzer).where(AnalysisResult.image_id.in_(ids))
        )
        for image_id, analyzer in rows:
            reported[image_id].add(analyzer)
    return reported


def missing_analyzers(image: Image, reported: Collection[str]) -> list[str]:
    """The expected analyzers without a result yet; ``reported`` holds analyzer names."""
    return [name for name in image.expected_analyzers if name not in reported]


def merge_insights(results: dict[str, AnalysisResult]) -> dict[str, Any]:
    """One insight record from the partial results; a failed analyzer's fields stay null."""
    insights: dict[str, Any] = dict.fromkeys(INSIGHT_FIELDS)
    for row in results.values():
        if row.status == "ok" and row.result:
            insights.update(row.result)
    return insights


def analyzer_report(results: dict[str, AnalysisResult]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "status": row.status,
            "version": row.analyzer_version,
            "elapsed_ms": round(row.elapsed_ms, 1),
            "error": row.error,
        }
        for name, row in sorted(results.items())
    }


def finish_image(session: Session, image: Image, results: dict[str, AnalysisResult]) -> None:
    """Mark an image final from its results: completed when any analyzer succeeded, else failed."""
    succeeded = [row for row in results.values() if row.status == "ok"]
    now = utc_now()
    image.completed_at = now
    image.updated_at = now
    if succeeded:
        image.status = COMPLETED
        image.insights = merge_insights(results)
        image.error = None
        image.scene_type = image.insights.get("scene_type")
        image.faces_detected = image.insights.get("faces_detected")
        image.text_found = image.insights.get("text_found")
    else:
        image.status = FAILED
        reasons = "; ".join(f"{name}: {row.error}" for name, row in sorted(results.items()))
        image.error = f"every analyzer failed ({reasons})" if results else "no analyzer reported"


def fail_image(session: Session, image: Image, reason: str) -> None:
    """Give up on an image, keeping whatever analyzers did report."""
    results = results_of(session, image.id)
    if any(row.status == "ok" for row in results.values()):
        finish_image(session, image, results)
        image.error = reason
        return
    image.status = FAILED
    image.error = reason
    image.completed_at = image.updated_at = utc_now()


def result_view(
    image: Image, results: dict[str, AnalysisResult] | None, public_url: str | None
) -> dict[str, Any]:
    """The JSON body of ``GET /api/results/:id`` (and of ``image.analysis.completed``)."""
    view: dict[str, Any] = {"id": image.id, "status": image.status}
    if image.status == COMPLETED:
        view["insights"] = image.insights
        if image.error:
            view["error"] = image.error
    elif image.status == FAILED:
        view["error"] = image.error
    if results is not None:
        view["analyzers"] = analyzer_report(results)
    view["created_at"] = _iso(image.created_at)
    if image.status != PROCESSING:
        view["completed_at"] = _iso(image.completed_at)
    view["public_url"] = public_url
    return view


def overdue_images(session: Session, older_than_s: float, limit: int = 500) -> list[Image]:
    """Images still processing whose last emission is older than the given age."""
    cutoff = utc_now() - timedelta(seconds=older_than_s)
    return list(
        session.scalars(
            select(Image)
            .where(Image.status == PROCESSING, Image.updated_at < cutoff)
            .order_by(Image.updated_at)
            .limit(limit)
        )
    )


def processing_images(session: Session, limit: int = 10_000) -> list[Image]:
    return list(
        session.scalars(select(Image).where(Image.status == PROCESSING).order_by(Image.id).limit(limit))
    )


def touch(session: Session, *image_ids: int, attempts_delta: int = 0) -> None:
    """Mark images as progressing now (the reconciler measures overdue from here)."""
    if not image_ids:
        return
    values: dict[str, Any] = {"updated_at": utc_now()}
    if attempts_delta:
        values["emit_attempts"] = Image.emit_attempts + attempts_delta
    # No session objects follow from this update (callers hold none they read afterwards).
    session.execute(
        update(Image).where(Image.id.in_(image_ids)).values(**values),
        execution_options={"synchronize_session": False},
    )
