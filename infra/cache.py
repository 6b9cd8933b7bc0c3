"""The result cache: Redis when ``REDIS_URL`` is set, an in-process LRU otherwise.

A cache failure is never an error for the caller: reads fall through to the database.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

log = logging.getLogger(__name__)


class ResultCache(Protocol):
    hits: int
    misses: int

    def get(self, image_id: int) -> dict[str, Any] | None: ...
    def get_many(self, image_ids: list[int]) -> dict[int, dict[str, Any]]: ...
    def set(self, image_id: int, result: dict[str, Any], ttl_s: int) -> None: ...
    def delete(self, image_id: int) -> None: ...
    def check(self) -> None: ...


class MemoryCache:
    """A bounded LRU with TTLs, for the single-machine default."""

    def __init__(self, max_items: int = 50_000) -> None:
        self.max_items = max_items
        self._items: OrderedDict[int, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, image_id: int) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(image_id)
            if item is None or item[0] < time.monotonic():
                self._items.pop(image_id, None)
                self.misses += 1
                return None
            self._items.move_to_end(image_id)
            self.hits += 1
            return item[1]

    def get_many(self, image_ids: list[int]) -> dict[int, dict[str, Any]]:
        found = {}
        for image_id in image_ids:
            result = self.get(image_id)
            if result is not None:
                found[image_id] = result
        return found

    def set(self, image_id: int, result: dict[str, Any], ttl_s: int) -> None:
        with self._lock:
            self._items[image_id] = (time.monotonic() + ttl_s, result)
            self._items.move_to_end(image_id)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def delete(self, image_id: int) -> None:
        with self._lock:
            self._items.pop(image_id, None)

    def check(self) -> None:
        return None


class RedisCache:
    """Results as JSON strings under ``peek:result:<id>`` with a TTL."""

    def __init__(self, url: str, namespace: str = "peek") -> None:
        import redis

        self.client = redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
        )
        self.prefix = f"{namespace}:result:"
        self.hits = 0
        self.misses = 0

    def get(self, image_id: int) -> dict[str, Any] | None:
        try:
            raw = self.client.get(self.prefix + str(image_id))
        except Exception as exc:  # a cache outage only costs speed
            log.warning("redis read failed: %s", exc)
            self.misses += 1
            return None
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(raw)  # type: ignore[no-any-return]

    def get_many(self, image_ids: list[int]) -> dict[int, dict[str, Any]]:
        if not image_ids:
            return {}
        try:
            raws = self.client.mget([self.prefix + str(i) for i in image_ids])
        except Exception as exc:
            log.warning("redis read failed: %s", exc)
            self.misses += len(image_ids)
            return {}
        found = {i: json.loads(raw) for i, raw in zip(image_ids, raws, strict=True) if raw}
        self.hits += len(found)
        self.misses += len(image_ids) - len(found)
        return found

    def set(self, image_id: int, result: dict[str, Any], ttl_s: int) -> None:
        try:
            self.client.set(self.prefix + str(image_id), json.dumps(result), ex=ttl_s)
        except Exception as exc:
            log.warning("redis write failed: %s", exc)

    def delete(self, image_id: int) -> None:
        try:
            self.client.delete(self.prefix + str(image_id))
        except Exception as exc:
            log.warning("redis delete failed: %s", exc)

    def check(self) -> None:
        self.client.ping()


def build_cache(redis_url: str, namespace: str = "peek") -> ResultCache:
    return RedisCache(redis_url, namespace) if redis_url else MemoryCache()
