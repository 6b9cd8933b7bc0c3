"""The API's Prometheus metrics: requests and latency per route, result-cache hits and misses."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("peek_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "peek_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CACHE_LOOKUPS = Counter(
    "peek_result_cache_lookups_total",
    "Result lookups by cache layer (local: this process, shared: Redis or the in-process store) and outcome",
    ["layer", "outcome"],
)
LONG_POLLS_WAITING = Gauge("peek_long_polls_waiting", "Requests waiting for a result to become final")
# Running totals for the hit ratio: answered from a cache, and answered from the database.
_answered = {"cache": 0, "database": 0}


def cache_hit(layer: str, count: int = 1) -> None:
    CACHE_LOOKUPS.labels(layer, "hit").inc(count)
    _answered["cache"] += count


def cache_miss(layer: str, count: int = 1) -> None:
    """A miss in ``layer``; a miss in the shared layer means the database answers."""
    CACHE_LOOKUPS.labels(layer, "miss").inc(count)
    if layer == "shared":
        _answered["database"] += count


class CacheHitRatio(Collector):
    """``peek_result_cache_hit_ratio``: results answered from a cache over all result lookups."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        hits, database = _answered["cache"], _answered["database"]
        family = GaugeMetricFamily(
            "peek_result_cache_hit_ratio", "Share of result lookups answered without the database"
        )
        family.add_metric([], hits / (hits + database) if hits + database else 0.0)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


REGISTRY.register(CacheHitRatio())


def _route_of(scope: Scope) -> str:
    """The route template (``/api/results/{image_id}``), so that ids do not explode the label set."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class MetricsMiddleware:
    """Counts requests and times them; a plain ASGI middleware, cheap enough for every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = _route_of(scope)
            method = scope["method"]
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(time.perf_counter() - started)
