"""Generate the published event contract from the pydantic models: JSON Schema files and AsyncAPI 3.

    python -m schemas.generate          # write schemas/generated/
    python -m schemas.generate --check  # exit 1 when the files on disk are stale

The files are committed and served by the API (``/api/schemas``); never edit them by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from infra.cloudevents import CONTENT_TYPE, SOURCE_API, SOURCE_SINK, SPEC_VERSION, event_type
from schemas.events import EVENT_MODELS, SCHEMA_VERSION

GENERATED_DIR = Path(__file__).with_name("generated")
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_FILE = "asyncapi.yaml"
ASYNCAPI_JSON_FILE = "asyncapi.json"

PRODUCERS = {
    "image.uploaded": f"{SOURCE_API} (uploads) or {SOURCE_SINK} (re-emissions by the reconciler)",
    "image.analysis.partial": "/peek/analyzers/<analyzer>",
    "image.analysis.completed": SOURCE_SINK,
}
SUMMARIES = {
    "image.uploaded": "An image was stored and waits for analysis.",
    "image.analysis.partial": "One analyzer's result for one image.",
    "image.analysis.completed": "The final result of an image, as GET /api/results/{id} returns it.",
}


def schema_file_name(topic: str) -> str:
    return f"{topic}.schema.json"


def event_json_schema(topic: str, model: type[BaseModel]) -> dict[str, Any]:
    """The standalone JSON Schema (draft 2020-12) of one topic's message value."""
    schema = model.model_json_schema()
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:peek:event:{topic}:v{SCHEMA_VERSION}",
        **schema,
        "description": (schema.get("description", "") + f"\n\nTopic `{topic}`, key = image id.").strip(),
    }


def _ce_headers_schema(topic: str) -> dict[str, Any]:
    """Message headers: the CloudEvents Kafka binding (binary content mode)."""
    return {
        "type": "object",
        "description": "CloudEvents attributes, Kafka protocol binding (binary mode)",
        "properties": {
            "ce_specversion": {"type": "string", "const": SPEC_VERSION},
            "ce_id": {"type": "string", "description": "Unique per event; equal for re-sent copies"},
            "ce_source": {"type": "string", "description": f"Producer: {PRODUCERS[topic]}"},
            "ce_type": {"type": "string", "const": event_type(topic)},
            "ce_time": {"type": "string", "format": "date-time"},
            "ce_subject": {"type": "string", "description": "The image id"},
            "content-type": {"type": "string", "const": CONTENT_TYPE},
        },
        "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"],
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of Peek's topics, with payloads from the same models."""
    _, definitions = models_json_schema(
        [(model, "validation") for model in EVENT_MODELS.values()],
        ref_template="#/components/schemas/{model}",
    )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic, model in EVENT_MODELS.items():
        channel_id = topic.replace(".", "_")
        message_id = model.__name__
        messages[message_id] = {
            "name": message_id,
            "title": topic,
            "summary": SUMMARIES[topic],
            "contentType": CONTENT_TYPE,
            "headers": _ce_headers_schema(topic),
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "The image id, in decimal"},
                    "bindingVersion": "0.5.0",
                }
            },
        }
        channels[channel_id] = {
            "address": topic,
            "description": f"{SUMMARIES[topic]} Keyed by image id, so one image's events stay in order.",
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
            "bindings": {"kafka": {"topic": topic, "bindingVersion": "0.5.0"}},
        }
        operations[f"publish_{channel_id}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"Peek produces {topic}.",
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Peek events",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": (
                "Image-analysis events on Kafka. Values are plain JSON; CloudEvents attributes travel "
                "in ce_* headers. Within a schema_version every change is additive: new fields are "
                "optional and old fields stay, so subscribers must ignore fields they do not know."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "Your KAFKA_BOOTSTRAP_SERVERS",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": definitions["$defs"]},
    }


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every generated file's name and text."""
    import yaml

    files = {
        schema_file_name(topic): _json(event_json_schema(topic, model))
        for topic, model in EVENT_MODELS.items()
    }
    document = asyncapi_document()
    files[ASYNCAPI_JSON_FILE] = _json(document)
    files[ASYNCAPI_FILE] = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return files


def stale_files(directory: Path = GENERATED_DIR) -> list[str]:
    """Names of generated files that are missing or differ from what the models give."""
    return [
        name
        for name, text in render().items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]


def write(directory: Path = GENERATED_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    files = render()
    for name, text in files.items():
        (directory / name).write_text(text)
    return sorted(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the generated files are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale: {', '.join(stale)}; run `python -m schemas.generate`", file=sys.stderr)
            return 1
        return 0
    for name in write():
        print(GENERATED_DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
