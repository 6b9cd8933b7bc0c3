"""CloudEvents attributes for Peek's Kafka events (Kafka protocol binding, binary content mode).

The message value stays the plain event JSON; the CloudEvents context travels in ``ce_*`` headers
so that standard tooling (Knative, Dapr, Argo Events, the CloudEvents SDKs) can route on it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

SPEC_VERSION = "1.0"
TYPE_PREFIX = "io.peek."
CONTENT_TYPE = "application/json"

SOURCE_API = "/peek/ingest-api"
SOURCE_SINK = "/peek/sink"


def analyzer_source(analyzer_name: str) -> str:
    return f"/peek/analyzers/{analyzer_name}"


def event_type(topic: str) -> str:
    """The CloudEvents ``type`` of the events on a topic, e.g. ``io.peek.image.analysis.completed``."""
    return TYPE_PREFIX + topic


def ce_headers(
    topic: str,
    source: str,
    subject: str,
    event_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, bytes]:
    """The ``ce_*`` headers (and ``content-type``) of one event.

    ``event_id`` should be stable for a re-sent event so that subscribers can drop duplicates;
    a fresh UUID otherwise.
    """
    moment = time or datetime.now(UTC)
    return {
        "ce_specversion": SPEC_VERSION.encode(),
        "ce_id": (event_id or uuid.uuid4().hex).encode(),
        "ce_source": source.encode(),
        "ce_type": event_type(topic).encode(),
        "ce_time": moment.astimezone(UTC).isoformat().replace("+00:00", "Z").encode(),
        "ce_subject": subject.encode(),
        "content-type": CONTENT_TYPE.encode(),
    }
