"""The OpenAPI 3.1 document served at ``GET /openapi.json``, generated rather than written.

Every schema comes from a model of shared/api_models.py (``models_json_schema`` in serialization mode, so a
schema describes exactly what ``json_body`` writes), every operation from the route table in
services/ingest/routes.py, and the few facts that depend on configuration (limits, whether an API key is needed)
from the running service's :class:`~shared.settings.Settings`. Nothing here names a field; a model or route that
changes changes the document with it. ``tests/test_openapi.py`` checks the served document against this one and
every answer of the running API against the document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.api_models import Problem, WebhookPayload
from shared.settings import Settings

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
REF_TEMPLATE = "#/components/schemas/{model}"
Schema = dict[str, Any]


@dataclass(frozen=True)
class Answer:
    """One documented response: its body model (none for a redirect) and media type."""

    description: str
    body: type[BaseModel] | None = None
    media_type: str = JSON
    headers: Mapping[str, Schema] = field(default_factory=dict)
    schema: Schema | None = None  # a body that is not one of our models (this document, the docs page)


@dataclass(frozen=True)
class Operation:
    """One route as clients see it. ``open``: served without the API key even when the server has one."""

    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    description: str
    answers: Mapping[int, Answer]
    parameters: tuple[Schema, ...] = ()
    request_body: Schema | None = None
    open: bool = False


def _ref(model: type[BaseModel]) -> Schema:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _schemas(operations: Iterable[Operation], settings: Settings) -> dict[str, Schema]:
    models = {answer.body for operation in operations for answer in operation.answers.values() if answer.body}
    models |= {Problem, WebhookPayload}  # 401 answers and the webhook
    _, document = models_json_schema(
        [(model, "serialization") for model in sorted(models, key=lambda model: model.__name__)],
        ref_template=REF_TEMPLATE,
    )
    schemas: dict[str, Schema] = document["$defs"]
    for schema in schemas.values():  # the one constraint a model cannot know: this server's cap on listed errors
        if "errors" in schema.get("properties", {}):
            schema["properties"]["errors"]["maxItems"] = settings.max_reported_errors
    return schemas


def _responses(operation: Operation, unauthorized: Answer | None) -> Schema:
    answers = dict(operation.answers)
    if unauthorized is not None and not operation.open:
        answers[401] = unauthorized
    responses: Schema = {}
    for status, answer in sorted(answers.items()):
        response: Schema = {"description": answer.description}
        if answer.body is not None or answer.schema is not None:
            schema = _ref(answer.body) if answer.body is not None else answer.schema
            response["content"] = {answer.media_type: {"schema": schema}}
        if answer.headers:
            response["headers"] = dict(answer.headers)
        responses[str(status)] = response
    return responses


def _operation(operation: Operation, unauthorized: Answer | None) -> Schema:
    document: Schema = {
        "operationId": operation.operation_id,
        "tags": [operation.tag],
        "summary": operation.summary,
        "description": operation.description,
        "responses": _responses(operation, unauthorized),
    }
    if operation.parameters:
        document["parameters"] = list(operation.parameters)
    if operation.request_body is not None:
        document["requestBody"] = operation.request_body
    if operation.open:
        document["security"] = []
    return document


def _webhooks() -> Schema:
    return {
        "request.finished": {
            "post": {
                "summary": "A request reached its final status",
                "description": "POSTed to the upload's `webhook_url`, signed per Standard Webhooks when the server "
                "has `PIXPRESS_WEBHOOK_SECRET`. `webhook-id` is the same on every retry; any 2xx answer ends the "
                "retries.",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref(WebhookPayload)}}},
                "responses": {"2XX": {"description": "Received; no further attempt is made."}},
            }
        }
    }


def build_openapi(operations: Iterable[Operation], settings: Settings, *, title: str, description: str) -> Schema:
    """The OpenAPI 3.1 document for a server running ``operations`` with ``settings``."""
    operations = list(operations)
    keyed = settings.api_key is not None
    unauthorized = Answer("The `X-API-Key` header is missing or wrong.", Problem, PROBLEM_JSON)
    paths: dict[str, Schema] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
            operation, unauthorized if keyed else None
        )
    open_paths = ", ".join(f"`{operation.path}`" for operation in operations if operation.open)
    access = (
        "This server requires an `X-API-Key` header on every operation marked with a lock"
        + (f" (all but {open_paths})." if open_paths else ".")
        if keyed
        else "This server is open: it needs no API key (`PIXPRESS_API_KEY` is not set)."
    )
    document: Schema = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1.0.0",
            "description": f"{description}\n\n{access}",
            "x-pixpress-limits": {
                "max_csv_bytes": settings.max_csv_bytes,
                "max_rows": settings.max_rows,
                "max_urls_per_row": settings.max_urls_per_row,
                "max_url_length": settings.max_url_length,
                "max_reported_errors": settings.max_reported_errors,
            },
        },
        "servers": [{"url": "/", "description": "this server"}],
        "tags": [{"name": tag} for tag in dict.fromkeys(operation.tag for operation in operations)],
        "paths": paths,
        "webhooks": _webhooks(),
        "components": {
            "schemas": _schemas(operations, settings),
            "securitySchemes": {
                "ApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "Needed only when the server sets `PIXPRESS_API_KEY`.",
                }
            },
        },
    }
    if keyed:
        document["security"] = [{"ApiKey": []}]
    return document
