"""The API's Prometheus metrics: requests and latency per route, result-cache hits and misses.

With several API processes (``PEEK_API_WORKERS`` > 1) ``peek api`` points prometheus_client's
multiprocess mode at a fresh folder (``PROMETHEUS_MULTIPROC_DIR``, read by prometheus_client when
it is first imported): every process writes its numbers there, and ``/metrics`` answers with all
of them together, whichever process serves it. One process keeps its numbers in memory.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import REGISTRY, Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.metrics import current_lag_collector

__all__ = [
    "CACHE_LOOKUPS",
    "LATENCY",
    "LONG_POLLS_WAITING",
    "REQUESTS",
    "AllProcesses",
    "CacheHitRatio",
    "MetricsMiddleware",
    "cache_hit",
    "cache_miss",
    "exposition",
    "hit_ratio",
]

# prometheus_client's own switch, which it reads when first imported: `peek api` sets it for its
# workers before they start. Empty with one API process.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

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
# Summed over the processes alive: a process that died waits for nothing.
LONG_POLLS_WAITING = Gauge(
    "peek_long_polls_waiting", "Requests waiting for a result to become final", multiprocess_mode="livesum"
)


def cache_hit(layer: str, count: int = 1) -> None:
    CACHE_LOOKUPS.labels(layer, "hit").inc(count)


def cache_miss(layer: str, count: int = 1) -> None:
    """A miss in ``layer``; a miss in the shared layer means the database answers."""
    CACHE_LOOKUPS.labels(layer, "miss").inc(count)


def hit_ratio(lookups: Iterable[Metric]) -> GaugeMetricFamily:
    """``peek_result_cache_hit_ratio`` from the lookup counters: results answered from a cache (a
    hit in either layer) over all results answered (those plus the shared layer's misses, which
    the database answered)."""
    hits = database = 0.0
    for family in lookups:
        for sample in family.samples:
            if sample.name != "peek_result_cache_lookups_total":
                continue
            if sample.labels.get("outcome") == "hit":
                hits += sample.value
            elif sample.labels.get("layer") == "shared":
                database += sample.value
    family = GaugeMetricFamily(
        "peek_result_cache_hit_ratio", "Share of result lookups answered without the database"
    )
    family.add_metric([], hits / (hits + database) if hits + database else 0.0)
    return family


class CacheHitRatio(Collector):
    """The hit ratio of this process's lookups (the registry of a single API process)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield hit_ratio(CACHE_LOOKUPS.collect())

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


REGISTRY.register(CacheHitRatio())

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def _forget_dead_processes(folder: str) -> None:
    """Drop the live gauges of API processes that are gone (killed, or replaced by uvicorn), so
    that, say, in-flight uploads of a process killed mid-request do not count for ever."""
    for path in glob.glob(os.path.join(folder, "gauge_live*.db")):
        match = _LIVE_GAUGE_FILE.search(os.path.basename(path))
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, folder)
        except PermissionError:  # alive, owned by someone else
            pass


class AllProcesses(Collector):
    """Every API process's metrics from the multiprocess folder, summed (gauges as each says),
    and the hit ratio of them all."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def collect(self) -> Iterator[Metric]:
        _forget_dead_processes(self.folder)
        families = list(MultiProcessCollector(None, self.folder).collect())
        yield from families
        yield hit_ratio(families)

    def describe(self) -> Iterator[Metric]:
        return iter(())


def exposition() -> bytes:
    """The text of ``GET /metrics``: this process's registry, or with several API processes their
    numbers together, plus consumer lag (asked from the broker by whichever process answers)."""
    if not MULTIPROCESS_DIR:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AllProcesses(MULTIPROCESS_DIR))
    lag = current_lag_collector()
    if lag is not None:
        registry.register(lag)
    return generate_latest(registry)


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
