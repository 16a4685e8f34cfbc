"""The compatibility rule of shared/messages.py, model by model: a field a reader does not know is ignored, a
missing or malformed required field is refused (the broker then dead-letters the message; tests/
test_message_evolution.py shows that on the running services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from shared.messages import (
    ImageBatch,
    ImageResult,
    ImageResults,
    ImageTask,
    Message,
    Progress,
    RequestAccepted,
    RequestFinished,
    SourceRecord,
)

pytestmark = pytest.mark.pure

REQUEST_ID = "3f2c8a1e-9b7d-4c55-8e0f-2a6b1d9c7e41"
SOURCE = {
    "sha256": "9f" * 32,
    "size": 1200,
    "etag": '"v1"',
    "last_modified": "Thu, 03 Dec 2026 10:00:00 GMT",
    "object_key": f"images/c/{'ab' * 32}.jpg",
}
TASK = {
    "request_id": REQUEST_ID,
    "product_id": f"{REQUEST_ID}:1",
    "row": 1,
    "index": 0,
    "url": "https://img.example/a.jpg",
    "attempt": 2,
}
RESULT = {
    "request_id": REQUEST_ID,
    "product_id": f"{REQUEST_ID}:1",
    "row": 1,
    "index": 0,
    "ok": True,
    "output_url": "http://127.0.0.1:9000/pixpress/images/a.jpg",
    "bytes_in": 10,
    "bytes_out": 5,
    "codec": "dct",
}
EXAMPLES: dict[type[Message], dict[str, Any]] = {
    RequestAccepted: {"request_id": REQUEST_ID},
    ImageTask: TASK,
    SourceRecord: SOURCE,
    ImageBatch: {"tasks": [{**TASK, "known": SOURCE}, {**TASK, "index": 1, "known": SOURCE}]},
    ImageResult: RESULT,
    ImageResults: {"results": [RESULT, {**RESULT, "index": 1, "ok": False, "error": "download failed: 404"}]},
    Progress: {"products_total": 1, "images_total": 2, "images_done": 1, "images_failed": 1},
    RequestFinished: {
        "request_id": REQUEST_ID,
        "status": "Completed",
        "progress": {"products_total": 1, "images_total": 1, "images_done": 1},
        "finished_at": "2026-12-03T10:00:00Z",
    },
}
MALFORMED: dict[type[Message], tuple[str, object]] = {
    RequestAccepted: ("request_id", 42),
    ImageTask: ("row", "first"),
    SourceRecord: ("sha256", "not a digest"),
    ImageBatch: ("tasks", []),  # a batch holds at least one task
    ImageResult: ("ok", "perhaps"),
    ImageResults: ("results", [RESULT] * 257),  # at most 256 results a message
    Progress: ("images_done", "many"),
    RequestFinished: ("status", "Done"),  # not one of the seed's four spellings
}


def required_fields(model: type[Message]) -> list[str]:
    return [name for name, field in model.model_fields.items() if field.is_required()]


def concrete_models(base: type[Message] = Message) -> set[type[Message]]:
    """Every model that is sent as it is (not only as the base of others)."""
    found: set[type[Message]] = set()
    for model in base.__subclasses__():
        found |= concrete_models(model) if model.__subclasses__() else {model}
    return found


def test_every_message_model_has_examples():
    assert set(EXAMPLES) == set(MALFORMED) == concrete_models()


@pytest.mark.parametrize("model", list(EXAMPLES), ids=lambda model: model.__name__)
def test_a_field_the_reader_does_not_know_is_ignored(model: type[Message]):
    known = model.model_validate_json(json.dumps(EXAMPLES[model]))
    newer = {**EXAMPLES[model], "added_by_a_newer_producer": {"any": ["shape"]}, "priority": 7}
    parsed = model.model_validate_json(json.dumps(newer))
    assert parsed == known
    assert "added_by_a_newer_producer" not in parsed.model_dump_json()


def test_a_newer_progress_inside_a_finished_event_is_read_too():
    event = {**EXAMPLES[RequestFinished], "progress": {"images_total": 3, "images_done": 3, "images_resized": 2}}
    parsed = RequestFinished.model_validate_json(json.dumps(event))
    assert (parsed.progress.images_total, parsed.progress.images_done) == (3, 3)
    assert parsed.finished_at == datetime(2026, 12, 3, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("model", "field"),
    [(model, field) for model in EXAMPLES for field in required_fields(model)],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_a_missing_required_field_is_refused(model: type[Message], field: str):
    incomplete = {key: value for key, value in EXAMPLES[model].items() if key != field}
    with pytest.raises(ValidationError) as refused:
        model.model_validate_json(json.dumps(incomplete))
    assert [error["type"] for error in refused.value.errors()] == ["missing"]


@pytest.mark.parametrize("model", list(MALFORMED), ids=lambda model: model.__name__)
def test_a_malformed_field_is_refused(model: type[Message]):
    field, value = MALFORMED[model]
    with pytest.raises(ValidationError) as refused:
        model.model_validate_json(json.dumps({**EXAMPLES[model], field: value}))
    assert {error["loc"][0] for error in refused.value.errors()} == {field}
