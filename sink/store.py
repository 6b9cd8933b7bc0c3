"""The insight store: image rows, idempotent merging of partial results, and result views.

Every function takes a SQLAlchemy session and leaves committing to the caller, except where the
docstring says otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
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
        uploaded_at=aware(image.created_at),
        attempt=attempt,
    )


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; Peek stores UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    return aware(moment).isoformat() if moment else None


# The batch statements are built once and bind their image ids as one expanding parameter:
# building an IN of literal values, or going through the ORM's bulk paths, costs more than running them.
_RESULTS = cast(Table, AnalysisResult.__table__)
_IMAGES = cast(Table, Image.__table__)
_LOCK_IMAGES = (
    select(Image).where(Image.id.in_(bindparam("ids", expanding=True))).order_by(Image.id).with_for_update()
)
_RECORD = {
    "postgresql": pg_insert(_RESULTS).on_conflict_do_nothing(),
    "sqlite": sqlite_insert(_RESULTS).on_conflict_do_nothing(),
}
_REPORTED = select(_RESULTS.c.image_id, _RESULTS.c.analyzer).where(
    _RESULTS.c.image_id.in_(bindparam("ids", expanding=True))
)
_RESULT_ROWS = select(AnalysisResult).where(AnalysisResult.image_id.in_(bindparam("ids", expanding=True)))
_TOUCH = (
    update(_IMAGES)
    .where(_IMAGES.c.id.in_(bindparam("ids", expanding=True)))
    .values(updated_at=bindparam("now"))
)

_REEMITTED = (
    update(_IMAGES)
    .where(_IMAGES.c.id == bindparam("image_id"))
    .values(
        updated_at=bindparam("now"),
        emitted_at=bindparam("sent_at"),
        emit_attempts=_IMAGES.c.emit_attempts + 1,
        event_partition=bindparam("partition"),
        event_offset=bindparam("offset"),
    )
)


def lock_images(session: Session, image_ids: Iterable[int]) -> dict[int, Image]:
    """The images with these ids that exist, locked for this transaction in id order (so that
    sinks sharing the work never wait on each other in a circle)."""
    ids = list(image_ids)
    if not ids:
        return {}
    return {image.id: image for image in session.scalars(_LOCK_IMAGES, {"ids": ids})}


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
    session.execute(_RECORD[session.get_bind().dialect.name], rows)


def results_of(session: Session, image_id: int) -> dict[str, AnalysisResult]:
    return results_of_images(session, [image_id]).get(image_id, {})


def results_of_images(session: Session, image_ids: Iterable[int]) -> dict[int, dict[str, AnalysisResult]]:
    """Each image's results by analyzer, in one query; images without results are absent."""
    found: dict[int, dict[str, AnalysisResult]] = {}
    ids = list(image_ids)
    if ids:
        for row in session.scalars(_RESULT_ROWS, {"ids": ids}):
            found.setdefault(row.image_id, {})[row.analyzer] = row
    return found


def analyzers_reported(session: Session, image_ids: Iterable[int]) -> defaultdict[int, set[str]]:
    """The analyzers each image has results from (names only: cheaper than loading the results)."""
    reported: defaultdict[int, set[str]] = defaultdict(set)
    ids = list(image_ids)
    if ids:
        for image_id, analyzer in session.execute(_REPORTED, {"ids": ids}):
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


def overdue_images(
    session: Session, older_than_s: float, limit: int = 500, after: tuple[datetime, int] | None = None
) -> list[Image]:
    """Images still processing whose last emission is older than the given age, longest quiet
    first; with ``after`` (an image's updated_at and id), only those that come after it."""
    cutoff = utc_now() - timedelta(seconds=older_than_s)
    query = select(Image).where(Image.status == PROCESSING, Image.updated_at < cutoff)
    if after is not None:
        since, image_id = after
        query = query.where(
            or_(Image.updated_at > since, and_(Image.updated_at == since, Image.id > image_id))
        )
    return list(session.scalars(query.order_by(Image.updated_at, Image.id).limit(limit)))


def processing_images(
    session: Session, *, after_id: int = 0, emitted_before: datetime | None = None, limit: int = 1000
) -> list[Image]:
    """Unfinished images in id order from ``after_id``; with ``emitted_before``, only those whose
    latest event was sent before then (rows from before that was recorded: created before then)."""
    query = select(Image).where(Image.status == PROCESSING, Image.id > after_id)
    if emitted_before is not None:
        query = query.where(func.coalesce(Image.emitted_at, Image.created_at) < emitted_before)
    return list(session.scalars(query.order_by(Image.id).limit(limit)))


def note_reemitted(session: Session, positions: dict[int, tuple[int, int]], sent_at: datetime) -> None:
    """Mark images re-emitted: one attempt more each, their new events' (partition, offset) by
    image id, and the moment they were sent; one statement for them all."""
    if positions:
        now = utc_now()
        session.execute(
            _REEMITTED,
            [
                {
                    "image_id": image_id,
                    "now": now,
                    "sent_at": sent_at,
                    "partition": partition,
                    "offset": offset,
                }
                for image_id, (partition, offset) in positions.items()
            ],
        )


def touch(session: Session, *image_ids: int) -> None:
    """Mark images as progressing now (the reconciler measures overdue from here).

    A plain table update: Image objects already loaded in the session keep their old values.
    """
    if image_ids:
        session.execute(_TOUCH, {"ids": list(image_ids), "now": utc_now()})
