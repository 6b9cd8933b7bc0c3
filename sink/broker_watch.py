"""Noticing a broker that forgot everything (the memory-only embedded one, after a restart).

Topics that vanished, or high watermarks lower than last seen, mean the events in flight are gone;
the sink then re-creates the topics and re-emits every unfinished image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import KafkaException

from infra.kafka import offsets_reader, partition_watermarks, topic_partitions
from schemas.topics import ANALYSIS_PARTIAL, IMAGE_UPLOADED

log = logging.getLogger(__name__)


class BrokerWatch:
    """Compares the watched topics' high watermarks with the last look."""

    def __init__(self, bootstrap: str, topics: Iterable[str] = (IMAGE_UPLOADED, ANALYSIS_PARTIAL)) -> None:
        self.topics = tuple(topics)
        self._reader = offsets_reader(bootstrap, "peek-broker-watch")
        self._high: dict[tuple[str, int], int] = {}

    def forgot(self) -> bool:
        """True when the broker lost data since the last call; False when unreachable or unchanged."""
        try:
            seen = {
                (topic, partition): high
                for topic in self.topics
                for partition, (_low, high) in self._watermarks(topic).items()
            }
        except KafkaException as exc:
            log.debug("broker watch: broker unreachable (%s)", exc)
            return False
        lost = [where for where, high in self._high.items() if seen.get(where, -1) < high]
        self._high = seen
        if lost:
            log.warning("the broker lost its events (%s); re-emitting unfinished work", lost[:3])
        return bool(lost)

    def _watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        partitions = topic_partitions(self._reader, topic, timeout_s=5)
        return {} if partitions is None else partition_watermarks(self._reader, partitions, timeout_s=5)

    def close(self) -> None:
        self._reader.close()
