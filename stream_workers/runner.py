"""Running one analyzer on one event, off the event loop, with a time limit.

The work happens in a few analysis processes: the event loop stays free for heartbeats, and a
hung analysis can be stopped by replacing its process. Each process opens storage once and reads
the image itself, so the image's bytes never pass through the worker's main process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from infra.storage import ObjectNotFound, Storage, StorageError
from schemas.events import AnalysisPartial, ImageUploaded
from stream_workers.annotate import scale_boxes
from stream_workers.processes import AnalysisProcesses, ProcessCrashed

log = logging.getLogger(__name__)


class PoisonEvent(ValueError):
    """An event that can never be processed; it goes to the dead-letter topic with this reason."""


# This analysis process's storage, opened once by _warm.
_storage: Storage | None = None


def _warm(analyzer_name: str, open_storage: Callable[[], Storage]) -> None:
    """Set-up of an analysis process: open storage and load the analyzer (and its models) once."""
    global _storage
    # Parallelism comes from the pipeline (processes, partitions), not from inside one call:
    # OpenCV's and Tesseract's own threads would only fight the other analyzers for the cores.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    import cv2

    cv2.setNumThreads(1)
    from stream_workers.analyzers import REGISTRY

    REGISTRY[analyzer_name]  # noqa: B018 - importing builds the models
    _storage = open_storage()


def analyze_stored(analyzer_name: str, storage_key: str, width: int, height: int) -> dict[str, Any]:
    """Read the image from storage, then decode and analyse it, in the analysis process."""
    if _storage is None:
        raise RuntimeError("analyze_stored runs only in a process set up by _warm")
    return analyze_bytes(analyzer_name, _storage.get(storage_key), width, height)


def analyze_bytes(analyzer_name: str, data: bytes, width: int, height: int) -> dict[str, Any]:
    """Decode and analyse; boxes come back in original-image coordinates."""
    from stream_workers.analyzers import REGISTRY
    from stream_workers.decode import MAX_SIDE, decode_image

    analyzer = REGISTRY[analyzer_name]
    image = decode_image(data, max_side=analyzer.decode_side or MAX_SIDE, gray=analyzer.luma_only)
    result = analyzer.run(image)
    # Boxes are found in decoded-image pixels and reported in the original's.
    return scale_boxes(result, width / image.shape[1], height / image.shape[0])


class AnalyzerRunner:
    """Turns ``image.uploaded`` events into ``AnalysisPartial`` events for one analyzer."""

    def __init__(
        self, analyzer_name: str, open_storage: Callable[[], Storage], *, processes: int, timeout_s: float
    ) -> None:
        """``open_storage`` is called once in each pool process, so it must pickle: a class or a
        ``functools.partial`` of a module-level function, not a lambda."""
        from stream_workers.analyzers import REGISTRY

        self.analyzer = REGISTRY[analyzer_name]
        self.open_storage = open_storage
        self.timeout_s = timeout_s
        self._processes: AnalysisProcesses | None = None
        self._threads: ThreadPoolExecutor | None = None
        if processes == 0:
            # In-process threads: for development and failure-injection tests; a hang cannot be killed.
            self._threads = self._new_threads()
        else:
            self._processes = AnalysisProcesses(processes, _warm, (self.analyzer.name, open_storage))

    def _new_threads(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=2,
            thread_name_prefix=f"analyze-{self.analyzer.name}",
            initializer=_warm,
            initargs=(self.analyzer.name, self.open_storage),
        )

    async def _analyze(self, event: ImageUploaded) -> dict[str, Any]:
        args = (self.analyzer.name, event.storage_key, event.width, event.height)
        if self._processes is not None:
            return await self._processes.run(analyze_stored, *args, timeout_s=self.timeout_s)
        assert self._threads is not None
        future = asyncio.get_running_loop().run_in_executor(self._threads, analyze_stored, *args)
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            # A thread cannot be stopped: leave it to finish on its own, and use fresh ones.
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = self._new_threads()
            raise

    def close(self) -> None:
        if self._processes is not None:
            self._processes.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def parse(raw: bytes | str) -> ImageUploaded:
        try:
            event = ImageUploaded.model_validate_json(raw)
        except Exception as exc:
            raise PoisonEvent(f"malformed image.uploaded event: {str(exc).splitlines()[0]}") from None
        from schemas.events import SCHEMA_VERSION

        if event.schema_version > SCHEMA_VERSION:
            raise PoisonEvent(
                f"unknown schema_version {event.schema_version} (this worker knows {SCHEMA_VERSION})"
            )
        return event

    def wants(self, event: ImageUploaded) -> bool:
        return self.analyzer.name in event.expected_analyzers

    async def handle(self, event: ImageUploaded) -> AnalysisPartial:
        """Analyse the image; a failure of the image or the analyzer becomes an ``error`` partial.

        Raises PoisonEvent when the image is gone from storage, and StorageError when storage
        cannot be read (not the image's fault, so no partial is made for it).
        """
        started = time.perf_counter()
        try:
            result = await self._analyze(event)
            return self._partial(event, started, result=result)
        except ObjectNotFound:
            raise PoisonEvent(f"image {event.id} is no longer in storage ({event.storage_key})") from None
        except StorageError:
            raise  # storage away: not this image's fault, so no error partial; the worker restarts
        except TimeoutError:
            log.error("%s on image %s passed its %.0f s limit", self.analyzer.name, event.id, self.timeout_s)
            return self._partial(
                event, started, error=f"analysis took longer than the {self.timeout_s:g} s limit"
            )
        except ProcessCrashed:
            return self._partial(event, started, error="the analyzer process crashed on this image")
        except Exception as exc:
            log.warning("%s failed on image %s: %s", self.analyzer.name, event.id, exc)
            return self._partial(event, started, error=_reason(exc))

    def _partial(
        self,
        event: ImageUploaded,
        started: float,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> AnalysisPartial:
        return AnalysisPartial(
            image_id=event.id,
            analyzer=self.analyzer.name,
            analyzer_version=self.analyzer.version,
            status="error" if error else "ok",
            result=result,
            error=error,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )


def _reason(exc: Exception) -> str:
    from stream_workers.decode import DecodeError

    if isinstance(exc, DecodeError):
        return f"the image could not be decoded: {exc}"
    return f"{type(exc).__name__}: {exc}"[:500]
