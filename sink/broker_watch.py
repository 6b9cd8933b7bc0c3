"""Noticing a broker that forgot everything (the memory-only embedded one, after a restart).

Topics that vanished, or high watermarks lower than last seen, mean the events in flight are gone;
the sink then re-creates the topics and re-emits every unfinished image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from schemas.topics import ANALYSIS_PARTIAL, IMAGE_UPLOADED

log = logging.getLogger(__name__)


class BrokerWatch:
    """Compares the watched topics' high watermarks with the last look."""

    def __init__(self, bootstrap: str, topics: Iterable[str] = (IMAGE_UPLOADED, ANALYSIS_PARTIAL)) -> None:
        self.topics = tuple(topics)
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "peek-broker-watch", "enable.auto.commit": False}
        )
        self._high: dict[tuple[str, int], int] = {}

    def forgot(self) -> bool:
        """True when the broker lost data since the last call; False when unreachable or unchanged."""
        try:
            metadata = self._consumer.list_topics(timeout=5)
            seen: dict[tuple[str, int], int] = {}
            for topic in self.topics:
                described = metadata.topics.get(topic)
                if described is None or described.error is not None:
                    continue
                for partition in described.partitions:
                    _low, high = self._consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=5, cached=False
                    )
                    seen[(topic, partition)] = high
        except KafkaException as exc:
            log.debug("broker watch: broker unreachable (%s)", exc)
            return False
        lost = [where for where, high in self._high.items() if seen.get(where, -1) < high]
        self._high = seen
        if lost:
            log.warning("the broker lost its events (%s); re-emitting unfinished work", lost[:3])
        return bool(lost)

    def close(self) -> None:
        self._consumer.close()
