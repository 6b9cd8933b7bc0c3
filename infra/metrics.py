"""Prometheus metrics shared by Peek's processes: pipeline metrics, consumer lag, the worker endpoint.

The API serves its registry on ``GET /metrics``; workers and the sink run Faust without a web
server, so they expose theirs with prometheus_client's own HTTP server on ``PEEK_METRICS_PORT``
(``peek up`` gives every process its own port).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from infra.kafka import group_positions, offsets_reader
from schemas.topics import ANALYSIS_PARTIAL, IMAGE_UPLOADED, SINK_GROUP, analyzer_group

log = logging.getLogger(__name__)

ANALYZER_SECONDS = Histogram(
    "peek_analyzer_duration_seconds",
    "Time one analyzer spent on one image (fetch, decode and analysis)",
    ["analyzer", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IMAGES_FINISHED = Counter("peek_images_finished_total", "Images the sink made final", ["status"])
WEBHOOK_DELIVERIES = Counter(
    "peek_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, gave_up)",
    ["outcome"],
)


def serve_metrics(port: int, process_name: str) -> int | None:
    """Expose this process's registry on ``port`` (0 = off); returns the port, None when off."""
    if port <= 0:
        return None
    start_http_server(port, addr="0.0.0.0")
    log.info("%s metrics on port %s (/metrics)", process_name, port)
    return port


def consumer_groups(analyzer_names: Iterable[str]) -> dict[str, str]:
    """Peek's consumer groups and the topic each consumes."""
    groups = {analyzer_group(name): IMAGE_UPLOADED for name in analyzer_names}
    groups[SINK_GROUP] = ANALYSIS_PARTIAL
    return groups


def measure_lag(bootstrap: str, groups: dict[str, str], timeout_s: float = 3.0) -> dict[str, int]:
    """Messages not yet committed by each group: high watermark minus committed offset, summed over
    the topic's partitions (a partition the group never committed counts from its low watermark)."""
    lag: dict[str, int] = {}
    for group, topic in groups.items():
        reader = offsets_reader(bootstrap, group)
        try:
            positions = group_positions(reader, topic, timeout_s=timeout_s)
        except Exception as exc:  # the broker away: report no number rather than a wrong one
            log.warning("could not measure lag of %s: %s", group, exc)
            continue
        finally:
            reader.close()
        if positions is not None:
            lag[group] = sum(
                max(0, high - positions.committed.get(partition, low))
                for partition, (low, high) in positions.watermarks.items()
            )
    return lag


class ConsumerLagCollector(Collector):
    """``peek_consumer_lag{group,topic}``, measured at most every ``max_age_s`` seconds."""

    def __init__(self, bootstrap: str, groups: dict[str, str], max_age_s: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.groups = groups
        self.max_age_s = max_age_s
        self._measured_at = 0.0
        self._lag: dict[str, int] = {}
        self._lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._measured_at > self.max_age_s:
                self._lag = measure_lag(self.bootstrap, self.groups)
                self._measured_at = time.monotonic()
            lag = dict(self._lag)
        family = GaugeMetricFamily(
            "peek_consumer_lag", "Messages not yet processed by a consumer group", labels=["group", "topic"]
        )
        for group, value in sorted(lag.items()):
            family.add_metric([group, self.groups[group]], value)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


_lag_collector: list[ConsumerLagCollector] = []


def register_lag_collector(bootstrap: str, analyzer_names: Iterable[str]) -> ConsumerLagCollector | None:
    """Export consumer lag from this process (replacing an earlier collector); None without a broker."""
    while _lag_collector:
        REGISTRY.unregister(_lag_collector.pop())
    if not bootstrap:
        return None
    collector = ConsumerLagCollector(bootstrap, consumer_groups(analyzer_names))
    REGISTRY.register(collector)
    _lag_collector.append(collector)
    return collector


def current_lag_collector() -> ConsumerLagCollector | None:
    """The collector registered by ``register_lag_collector``, for a registry of one's own (the
    API's with several processes); None when there is none."""
    return _lag_collector[-1] if _lag_collector else None
