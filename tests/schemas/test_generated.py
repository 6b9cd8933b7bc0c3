"""The published contract (JSON Schema, AsyncAPI) is generated from the models and up to date."""

from __future__ import annotations

import json

import yaml

from schemas.events import EVENT_MODELS
from schemas.generate import GENERATED_DIR, asyncapi_document, render, schema_file_name, stale_files


def test_generated_files_match_the_models() -> None:
    stale = stale_files()
    assert not stale, f"stale generated files {stale}: run `python -m schemas.generate` and commit"


def test_every_topic_has_a_schema_file_and_an_asyncapi_channel() -> None:
    document = yaml.safe_load((GENERATED_DIR / "asyncapi.yaml").read_text())
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == set(EVENT_MODELS)
    for topic in EVENT_MODELS:
        schema = json.loads((GENERATED_DIR / schema_file_name(topic)).read_text())
        assert schema["$schema"].endswith("2020-12/schema")
        assert "schema_version" in schema["properties"]
    # Every $ref in the AsyncAPI document resolves inside it.
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/')[1:]}:
        node = document
        for step in ref.split("/"):
            node = node[step]


def test_the_generator_notices_a_stale_file(tmp_path) -> None:
    for name, text in render().items():
        (tmp_path / name).write_text(text)
    assert stale_files(tmp_path) == []
    (tmp_path / "asyncapi.yaml").write_text("asyncapi: 3.0.0\n")
    assert stale_files(tmp_path) == ["asyncapi.yaml"]


def test_asyncapi_headers_follow_the_cloudevents_kafka_binding() -> None:
    for message in asyncapi_document()["components"]["messages"].values():
        headers = message["headers"]
        assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"} <= set(headers["required"])
