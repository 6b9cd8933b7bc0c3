"""Completion notices: the sink announces a final result, waiting API requests wake up.

With Redis, the sink publishes the image id on one pub/sub channel and every API process holds
a single subscription that wakes the requests waiting for that id, so a waiting request costs
no database query. Without Redis (the single-machine default) there is no channel between the
processes; waiters then fall back to a low-frequency check of the database (see
``ingest_api.result_reads``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

log = logging.getLogger(__name__)


def channel(namespace: str) -> str:
    return f"{namespace}:completed"


class CompletionPublisher:
    """Announces final results; a no-op without Redis. Never raises: a lost notice only makes a
    waiting request end at its deadline, where it reads the result anyway."""

    def __init__(self, redis_url: str, namespace: str = "peek") -> None:
        self.channel = channel(namespace)
        self._client = None
        if redis_url:
            import redis

            self._client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def publish(self, image_id: int) -> None:
        if self._client is None:
            return
        try:
            self._client.publish(self.channel, str(image_id))
        except Exception as exc:
            log.warning("could not announce completion of image %s: %s", image_id, exc)


class CompletionWaiter:
    """Lets requests wait for an image's completion notice (one Redis subscription per process)."""

    def __init__(self, redis_url: str, namespace: str = "peek") -> None:
        self.redis_url = redis_url
        self.channel = channel(namespace)
        self._waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    @property
    def live(self) -> bool:
        """True when notices can arrive (Redis configured): waiters need not poll the database."""
        return bool(self.redis_url)

    def start(self) -> None:
        if self.redis_url and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="completion-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        while True:
            client = aioredis.Redis.from_url(self.redis_url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.connected.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: waiters end at their deadline; reconnect
                self.connected.clear()
                log.warning("completion listener lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _wake(self, data: bytes | str) -> None:
        try:
            image_id = int(data)
        except (TypeError, ValueError):
            return
        for event in self._waiters.get(image_id, ()):
            event.set()

    @contextlib.contextmanager
    def subscription(self, image_id: int) -> Iterator[asyncio.Event]:
        """Register interest before checking the result, so a notice in between is not missed."""
        event = asyncio.Event()
        self._waiters[image_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(image_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[image_id]

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiters.values())
