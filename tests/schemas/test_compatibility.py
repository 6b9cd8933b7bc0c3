"""Changes are additive within a schema_version: events written by the previous models still read.

``tests/schemas/previous/`` holds events and JSON Schemas produced by the previous version of the
models (schema_version 1 as first released); they are never regenerated from the current ones.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

from schemas.events import EVENT_MODELS, SCHEMA_VERSION
from schemas.generate import GENERATED_DIR, schema_file_name

PREVIOUS = Path(__file__).with_name("previous")
EVENT_FILES = sorted(PREVIOUS.glob("*.event.json"))


def _topic_of(path: Path) -> str:
    return next(topic for topic in EVENT_MODELS if path.name.startswith(topic + "."))


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.name)
def test_current_models_read_previous_events(path: Path) -> None:
    raw = json.loads(path.read_text())
    model = EVENT_MODELS[_topic_of(path)]
    event = model.model_validate_json(path.read_text())
    assert event.schema_version == raw["schema_version"] == SCHEMA_VERSION
    # Nothing the old producer wrote is lost when the event is read and written again.
    assert _contains(json.loads(event.to_bytes()), raw)


def _contains(written: object, original: object) -> bool:
    """Every field of ``original`` is in ``written`` with the same value (new fields may be added)."""
    if isinstance(original, str) and isinstance(written, str) and _is_moment(original):
        return datetime.fromisoformat(written) == datetime.fromisoformat(original)
    if isinstance(original, dict):
        return isinstance(written, dict) and all(
            key in written and _contains(written[key], value) for key, value in original.items()
        )
    return written == original


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.name)
def test_previous_events_validate_against_the_published_schema(path: Path) -> None:
    schema = json.loads((GENERATED_DIR / schema_file_name(_topic_of(path))).read_text())
    jsonschema.validate(json.loads(path.read_text()), schema)


@pytest.mark.parametrize("topic", list(EVENT_MODELS))
def test_schema_changes_are_additive(topic: str) -> None:
    previous = json.loads((PREVIOUS / schema_file_name(topic)).read_text())
    current = json.loads((GENERATED_DIR / schema_file_name(topic)).read_text())
    removed = set(previous["properties"]) - set(current["properties"])
    assert not removed, f"{topic}: fields removed within schema_version {SCHEMA_VERSION}: {removed}"
    newly_required = set(current.get("required", [])) - set(previous.get("required", []))
    assert not newly_required, f"{topic}: new fields must be optional, not required: {newly_required}"
    assert current.get("additionalProperties", True) is not False, "subscribers' extra fields must pass"


def _is_moment(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
        return "T" in text
    except ValueError:
        return False
