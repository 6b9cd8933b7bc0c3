"""Subscribe to Peek's analysis results with plain confluent-kafka: no Peek code needed.

    pip install confluent-kafka
    python examples/subscriber.py --bootstrap localhost:9092 --group my-service

Prints one line per completed image. The value is the JSON that ``GET /api/results/:id`` returns
(plus ``schema_version``); CloudEvents attributes are in the ``ce_*`` headers. Offsets are
committed after an event is handled, so a crash re-delivers rather than loses: make handling
idempotent (the image id, or the ``ce_id`` header, identifies an event).
"""

from __future__ import annotations

import argparse
import json
import sys

from confluent_kafka import Consumer, KafkaException

KNOWN_SCHEMA_VERSION = 1


def handle(event: dict, headers: dict[str, str]) -> None:
    """React to one completed image; here: print a summary line."""
    insights = event.get("insights") or {}
    summary = {
        "id": event["id"],
        "status": event["status"],
        "scene_type": insights.get("scene_type"),
        "faces_detected": insights.get("faces_detected"),
        "text_found": insights.get("text_found"),
        "ce_type": headers.get("ce_type"),
        "ce_id": headers.get("ce_id"),
    }
    print(json.dumps(summary), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--group", default="peek-example-subscriber")
    parser.add_argument("--topic", default="image.analysis.completed")
    parser.add_argument("--max-events", type=int, default=0, help="stop after this many (0 = run forever)")
    args = parser.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",  # a new group starts from the oldest retained event
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    handled = 0
    try:
        while not args.max_events or handled < args.max_events:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            headers = {key: value.decode() for key, value in message.headers() or []}
            event = json.loads(message.value())
            # Within a schema_version changes are additive: unknown fields are safe to ignore.
            # A higher version may change meanings, so an old subscriber skips it loudly.
            if event.get("schema_version", 1) > KNOWN_SCHEMA_VERSION:
                print(f"skipping schema_version {event['schema_version']} event", file=sys.stderr)
            else:
                handle(event, headers)
            consumer.commit(message=message, asynchronous=False)
            handled += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
