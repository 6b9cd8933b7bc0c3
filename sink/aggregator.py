"""Merging partial results into insight records, completing images, and reconciling overdue ones.

Plain synchronous functions over a database session, a producer and the result cache; the Faust app in
``sink.app`` calls them off the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.cache import ResultCache
from infra.cloudevents import SOURCE_SINK, ce_headers
from infra.kafka import EventProducer
from infra.settings import Settings
from infra.urls import public_url
from schemas.events import AnalysisCompleted, AnalysisPartial
from schemas.topics import ANALYSIS_COMPLETED, IMAGE_UPLOADED
from sink.models import PROCESSING, AnalysisResult, Image, utc_now
from sink.queues import QueueLook, QueueWatch, Verdict, verdict
from sink.store import (
    analyzers_reported,
    aware,
    fail_image,
    finish_image,
    lock_images,
    missing_analyzers,
    note_reemitted,
    overdue_images,
    processing_images,
    record_partials,
    result_view,
    results_of,
    results_of_images,
    touch,
    uploaded_event,
)

log = logging.getLogger(__name__)
# Unfinished images re-emitted per transaction (and per batch of produce requests).
REEMIT_PAGE = 1000
# Images without progress that one reconcile pass looks at.
RECONCILE_PAGE = 500

# Called with (result view, callback_url) once a completing transaction has committed.
CompletionHook = Callable[[dict[str, Any], str | None], None]

# An image with no progress for this long (or PEEK_RECONCILE_AFTER_S, if shorter) is looked at:
# a lost event is re-emitted then, without waiting for the overdue deadline.
LOST_CHECK_AFTER_S = 30.0


@dataclass
class Aggregator:
    settings: Settings
    sessions: sessionmaker[Session]
    producer: EventProducer
    cache: ResultCache
    # Tells events still queued in Kafka from lost ones; without it overdue means lost.
    queues: QueueWatch | None = None
    on_completed: list[CompletionHook] = field(default_factory=list)
    # Where the next reconcile pass starts among the images without progress (updated_at, id):
    # each pass looks at the next RECONCILE_PAGE of them, so that behind a backlog longer than a
    # page, still queued, the newer ones are looked at too.
    _sweep_from: tuple[datetime, int] | None = field(default=None, repr=False)

    def _announce(self, completed: list[tuple[dict[str, Any], str | None]]) -> None:
        """Tell the hooks (long-poll notices, webhooks) about committed completions; a failing hook
        never undoes or repeats the completion."""
        for view, callback_url in completed:
            for hook in self.on_completed:
                try:
                    hook(view, callback_url)
                except Exception as exc:
                    log.warning("completion hook failed for image %s: %s", view.get("id"), exc)

    def apply_partial(self, partial: AnalysisPartial) -> dict[str, Any] | None:
        """Record one partial; the completed result when it was the last one expected."""
        completed = self.apply_partials([partial])
        return completed[0] if completed else None

    def apply_partials(self, partials: Sequence[AnalysisPartial]) -> list[dict[str, Any]]:
        """Record a batch of partials in one transaction and complete every image whose last
        expected partial is among them; returns the completed results.

        A duplicate or late partial changes nothing (within the batch too: the first copy counts).
        All or nothing: when anything fails, nothing is committed or announced and the whole batch
        can be applied again.
        """
        if not partials:
            return []
        firsts: dict[tuple[int, str], AnalysisPartial] = {}
        for partial in partials:
            firsts.setdefault((partial.image_id, partial.analyzer), partial)
        image_ids = sorted({image_id for image_id, _ in firsts})
        with self.sessions.begin() as session:
            images = lock_images(session, image_ids)
            for image_id in image_ids:
                if image_id not in images:
                    log.warning("partial for unknown image %s ignored", image_id)
            record_partials(session, [p for (image_id, _), p in firsts.items() if image_id in images])
            open_images = [image for image in images.values() if image.status == PROCESSING]
            reported = analyzers_reported(session, [image.id for image in open_images])
            done = [image for image in open_images if not missing_analyzers(image, reported[image.id])]
            done_ids = {image.id for image in done}
            touch(session, *(image.id for image in open_images if image.id not in done_ids))
            results = results_of_images(session, [image.id for image in done])
            finished = [(image, results[image.id]) for image in done]
            for image, image_results in finished:
                finish_image(session, image, image_results)
            views = self._publish_all(session, finished)
            announced = [(view, image.callback_url) for view, (image, _) in zip(views, finished, strict=True)]
        self._announce(announced)
        return [view for view, _ in announced]

    def _publish(self, session: Session, image: Image, results: dict[str, AnalysisResult]) -> dict[str, Any]:
        return self._publish_all(session, [(image, results)])[0]

    def _publish_all(
        self, session: Session, finished: list[tuple[Image, dict[str, AnalysisResult]]]
    ) -> list[dict[str, Any]]:
        """Emit ``image.analysis.completed`` and cache, inside the completing transaction:
        if anything fails the transaction rolls back and the partials are processed again."""
        if not finished:
            return []
        views, messages = [], []
        for image, results in finished:
            view = result_view(image, results, public_url(self.settings, image.id, image.storage_key))
            completed = AnalysisCompleted.model_validate(view)
            # One completion per image, so a stable id lets subscribers drop re-sent copies.
            headers = ce_headers(
                ANALYSIS_COMPLETED,
                SOURCE_SINK,
                str(image.id),
                event_id=f"{image.id}.completed",
                time=image.completed_at,
            )
            views.append(view)
            messages.append((str(image.id), completed.to_bytes(), headers))
        self.producer.send_all_sync(ANALYSIS_COMPLETED, messages)
        session.flush()
        for (image, _), view in zip(finished, views, strict=True):
            self.cache.set(image.id, view, self.settings.result_cache_ttl_s)
        return views

    def reemit_processing(self, emitted_before: datetime | None = None) -> int:
        """Emit ``image.uploaded`` again for the unfinished images whose latest event a broker that
        forgot held: those sent before ``emitted_before`` (when it started), or every one."""
        count, after_id = 0, 0
        while True:
            with self.sessions.begin() as session:
                images = processing_images(
                    session, after_id=after_id, emitted_before=emitted_before, limit=REEMIT_PAGE
                )
                if not images:
                    return count
                reported = analyzers_reported(session, [image.id for image in images])
                self._reemit_all(
                    session,
                    [
                        (image, missing_analyzers(image, reported[image.id]), image.emit_attempts + 1)
                        for image in images
                    ],
                )
            count += len(images)
            after_id = images[-1].id

    def reconcile(self) -> int:
        """Settle images without progress: complete those that have every result, re-emit the
        missing analyzers whose event was lost or is overdue, and give up after the configured
        attempts. Returns how many images it acted on.

        An event still queued in front of an analyzer that is working its way through the queue is
        left there however long it takes (a bulk ingest); one the analyzer took but whose result the
        sink never got is re-emitted without waiting for the deadline; one whose fate the broker
        cannot tell (an analyzer that stalled, a broker that forgot) is overdue after
        ``PEEK_RECONCILE_AFTER_S``.
        """
        after_s = self.settings.reconcile_after_s
        quiet_s = min(after_s, LOST_CHECK_AFTER_S)
        with self.sessions() as session:
            suspects = overdue_images(session, quiet_s, RECONCILE_PAGE, self._sweep_from)
            if not suspects and self._sweep_from is not None:  # past the last one: start over
                suspects = overdue_images(session, quiet_s, RECONCILE_PAGE)
        last = suspects[-1] if len(suspects) == RECONCILE_PAGE else None
        self._sweep_from = (last.updated_at, last.id) if last is not None else None
        if not suspects:
            if self.queues is not None:
                self.queues.release()
            return 0
        # Offsets first, results after: a partial the sink consumed before this look is in the
        # database by then (it commits its offsets after its transaction).
        looks = self.queues.look() if self.queues is not None else None
        now, before = looks if looks is not None else (None, None)
        overdue_before = utc_now() - timedelta(seconds=after_s)
        handled = 0
        completed: list[tuple[dict[str, Any], str | None]] = []
        with self.sessions.begin() as session:
            reported = analyzers_reported(session, [image.id for image in suspects])
            for suspect in suspects:
                missing = missing_analyzers(suspect, reported[suspect.id])
                lost, unknown = self._judge(suspect, missing, now, before)
                due = lost + (unknown if aware(suspect.updated_at) < overdue_before else [])
                if missing and not due:
                    continue
                image = session.scalars(
                    select(Image).where(Image.id == suspect.id).with_for_update(skip_locked=True)
                ).first()
                if image is None or image.status != PROCESSING or image.updated_at != suspect.updated_at:
                    continue  # another sink has it, or it moved on since the look
                handled += 1
                if not missing:
                    results = results_of(session, image.id)
                    finish_image(session, image, results)
                    completed.append((self._publish(session, image, results), image.callback_url))
                elif image.emit_attempts >= self.settings.reconcile_max_attempts:
                    fail_image(
                        session,
                        image,
                        f"analysis timed out: {', '.join(missing)} did not report after "
                        f"{image.emit_attempts} attempts",
                    )
                    view = self._publish(session, image, results_of(session, image.id))
                    completed.append((view, image.callback_url))
                else:
                    self._reemit(session, image, due, attempt=image.emit_attempts + 1)
        self._announce(completed)
        return handled

    def _judge(
        self, image: Image, missing: list[str], now: QueueLook | None, before: QueueLook | None
    ) -> tuple[list[str], list[str]]:
        """The missing analyzers whose event is lost, and those whose fate only the image's age can
        tell; the rest are waiting in Kafka."""
        position = (
            (image.event_partition, image.event_offset)
            if image.event_partition is not None and image.event_offset is not None
            else None
        )
        lost, unknown = [], []
        for name in missing:
            stalled = self.queues is None or position is None or self.queues.stalled(name, position[0])
            judged = verdict(position, name, now, before, stalled)
            if judged is Verdict.LOST:
                lost.append(name)
            elif judged is Verdict.UNKNOWN:
                unknown.append(name)
        return lost, unknown

    def _reemit(self, session: Session, image: Image, analyzers: list[str], attempt: int) -> None:
        """Emit ``image.uploaded`` again for these analyzers, and remember where it landed."""
        self._reemit_all(session, [(image, analyzers, attempt)])

    def _reemit_all(self, session: Session, reemits: Sequence[tuple[Image, list[str], int]]) -> None:
        """``_reemit`` for many images at once: their events share produce requests."""
        reemits = [(image, analyzers, attempt) for image, analyzers, attempt in reemits if analyzers]
        messages = []
        for image, analyzers, attempt in reemits:
            event = uploaded_event(image, analyzers=analyzers, attempt=attempt)
            headers = ce_headers(
                IMAGE_UPLOADED, SOURCE_SINK, str(image.id), event_id=f"{image.id}.uploaded.{attempt}"
            )
            messages.append((str(image.id), event.to_bytes(), headers))
        sent_at = utc_now()  # before sending: a broker that starts meanwhile may hold the events
        positions = self.producer.send_all_sync(IMAGE_UPLOADED, messages)
        note_reemitted(
            session,
            {image.id: position for (image, _, _), position in zip(reemits, positions, strict=True)},
            sent_at,
        )
        for image, analyzers, attempt in reemits:
            log.info("re-emitted image %s for %s (attempt %s)", image.id, ",".join(analyzers), attempt)
