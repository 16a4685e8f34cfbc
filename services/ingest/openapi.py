"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json`` and rendered at ``GET /docs``.

The document is built from the running service's :class:`~shared.settings.Settings`, so the limits it states
and whether it asks for an API key are the ones this server enforces. It describes what the handlers in
:mod:`services.ingest.api` and :mod:`services.ingest.upload` really answer; ``tests/test_openapi.py`` checks
that against the running API with schemathesis.
"""

from __future__ import annotations

from typing import Any

from services.ingest.upload import ACCEPTED_MESSAGE
from shared.messages import RequestStatus
from shared.settings import Settings

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
PROBLEM_JSON = "application/problem+json"
JSON = "application/json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem_response(description: str) -> Schema:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _ref("Problem")}}}


def _json_response(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _schemas(settings: Settings) -> dict[str, Schema]:
    counter = {"type": "integer", "minimum": 0}
    schemas: dict[str, Schema] = {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details. `type` names the problem; `detail` says what to fix.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {
                    "type": "string",
                    "format": "uri",
                    "description": "Problem type, e.g. `https://pixpress.dev/problems/invalid-csv`.",
                },
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "errors": {
                    "type": "array",
                    "description": (
                        "Every problem found in the file, in file order, at most "
                        f"{settings.max_reported_errors} (`PIXPRESS_MAX_REPORTED_ERRORS`); `detail` says when "
                        "the list was cut short."
                    ),
                    "maxItems": settings.max_reported_errors,
                    "items": _ref("RowError"),
                },
                "row_numbering": {"type": "string", "description": "How `errors[].row` counts rows."},
                "limit_bytes": {"type": "integer", "description": "The byte limit a too-large file broke."},
            },
            "additionalProperties": True,
        },
        "RowError": {
            "type": "object",
            "description": "One problem in the CSV. Row 1 is the first data row; row 0 is the header or the file.",
            "required": ["row", "column", "message"],
            "properties": {
                "row": {"type": "integer", "minimum": 0},
                "column": {
                    "type": ["string", "null"],
                    "description": "The column concerned, or null when the problem is the whole row or file.",
                },
                "message": {"type": "string"},
            },
            "additionalProperties": False,
        },
        "IdError": {
            "type": "object",
            "description": "Problem details for a malformed (400) or unknown (404) request id; `error` repeats "
            '`detail` for clients of the seed API, which answered `{"error": ...}`.',
            "required": ["type", "title", "status", "detail", "error"],
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": {"type": "string"},
                "status": {"type": "integer", "enum": [400, 404]},
                "detail": {"type": "string"},
                "error": {"type": "string"},
            },
            "additionalProperties": False,
        },
        "UploadAccepted": {
            "type": "object",
            "description": "The seed's answer, plus `status_url` (and `replayed` for a repeated Idempotency-Key).",
            "required": ["message", "request_id", "status_url"],
            "properties": {
                "message": {"type": "string", "const": ACCEPTED_MESSAGE},
                "request_id": {"type": "string", "format": "uuid", "description": "A random UUID (version 4)."},
                "status_url": {"type": "string", "description": "Path of the status resource, `/status/{id}`."},
                "replayed": {
                    "type": "boolean",
                    "const": True,
                    "description": "Present when the Idempotency-Key was seen before with the same file.",
                },
            },
            "additionalProperties": False,
        },
        "Progress": {
            "type": "object",
            "required": [
                "products_total",
                "images_total",
                "images_done",
                "images_failed",
                "images_settled",
                "percent",
                "bytes_in",
                "bytes_out",
                "savings_percent",
            ],
            "properties": {
                "products_total": {**counter, "description": "Data rows in the CSV."},
                "images_total": {**counter, "description": "Input image URLs in the CSV."},
                "images_done": {**counter, "description": "Images compressed and stored."},
                "images_failed": {**counter, "description": "Images that failed for good (reason per product)."},
                "images_settled": {**counter, "description": "`images_done + images_failed`."},
                "percent": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 100,
                    "description": "Settled images in percent of `images_total`, two decimals.",
                },
                "bytes_in": {**counter, "description": "Bytes downloaded (successful images)."},
                "bytes_out": {**counter, "description": "Bytes stored after compression."},
                "savings_percent": {
                    "type": ["number", "null"],
                    "description": "`100 * (1 - bytes_out / bytes_in)`; null before the first image is done.",
                },
            },
            "additionalProperties": False,
        },
        "Status": {
            "type": "object",
            "required": ["request_id", "status", "created_at", "updated_at", "progress"],
            "properties": {
                "request_id": {"type": "string", "format": "uuid"},
                "status": {
                    "type": "string",
                    "enum": [s.value for s in RequestStatus],
                    "description": (
                        "`Queued` → `Processing` → `Completed` (every image settled, at least one succeeded) "
                        "or `Failed` (the CSV could not be processed, or no image succeeded)."
                    ),
                },
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "progress": _ref("Progress"),
                "output_csv_url": {
                    "type": "string",
                    "format": "uri",
                    "description": "Absolute URL of the output CSV; present once it exists (GET needs no credentials).",
                },
                "error": {"type": "string", "description": "Why the request failed; present only when `Failed`."},
            },
            "additionalProperties": False,
        },
        "WebhookAttempt": {
            "type": "object",
            "required": ["attempt", "at", "ok", "status_code", "error", "duration_ms"],
            "properties": {
                "attempt": {"type": "integer", "minimum": 1},
                "at": {"type": ["string", "null"], "format": "date-time"},
                "ok": {"type": "boolean", "description": "The receiver answered 2xx."},
                "status_code": {"type": ["integer", "null"]},
                "error": {"type": ["string", "null"]},
                "duration_ms": {"type": "integer", "minimum": 0},
                "refused": {
                    "type": "boolean",
                    "description": "The SSRF guard refused the URL (private, loopback or reserved address, or a "
                    "spelling of one); no further attempt is made and the delivery is `dead` at once.",
                },
            },
            "additionalProperties": False,
        },
        "Webhook": {
            "type": "object",
            "required": ["target", "webhook_id", "state", "attempts"],
            "properties": {
                "target": {
                    "type": "string",
                    "description": "Scheme and host of the webhook URL only (no path, query or credentials).",
                },
                "webhook_id": {
                    "type": "string",
                    "description": "The `webhook-id` header of every delivery attempt (`msg_<request_id>`).",
                },
                "state": {"type": "string", "enum": ["pending", "retrying", "delivered", "dead"]},
                "attempts": {"type": "array", "items": _ref("WebhookAttempt")},
            },
            "additionalProperties": False,
        },
        "Product": {
            "type": "object",
            "required": [
                "row",
                "serial_number",
                "product_name",
                "extra",
                "input_image_urls",
                "output_image_urls",
                "image_errors",
                "pending",
            ],
            "properties": {
                "row": {"type": "integer", "minimum": 1, "description": "1 = first data row of the CSV."},
                "serial_number": {"type": "string"},
                "product_name": {"type": "string"},
                "extra": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "The input's extra columns, by header name.",
                },
                "input_image_urls": {"type": "array", "items": {"type": "string"}},
                "output_image_urls": {
                    "type": "array",
                    "items": {"type": ["string", "null"]},
                    "description": "One slot per input URL, same order; null until done or when failed.",
                },
                "image_errors": {
                    "type": "array",
                    "items": {"type": ["string", "null"]},
                    "description": "One slot per input URL; the reason an image failed, else null.",
                },
                "pending": {**counter, "description": "Images of this product not yet settled."},
            },
            "additionalProperties": False,
        },
        "ProductsPage": {
            "type": "object",
            "required": ["request_id", "offset", "limit", "total", "items"],
            "properties": {
                "request_id": {"type": "string", "format": "uuid"},
                "offset": counter,
                "limit": {"type": "integer", "minimum": 1},
                "total": {**counter, "description": "Products in the request."},
                "items": {"type": "array", "items": _ref("Product")},
                "next": {"type": "string", "description": "Path of the next page; absent on the last page."},
            },
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
            },
            "additionalProperties": False,
        },
    }
    # the status body plus one field; spelled out (not allOf) because Status forbids additional properties
    status = schemas["Status"]
    schemas["RequestDetail"] = {
        "type": "object",
        "description": "The status body plus the webhook delivery history (null without a webhook_url).",
        "required": [*status["required"], "webhook"],
        "properties": {**status["properties"], "webhook": {"oneOf": [_ref("Webhook"), {"type": "null"}]}},
        "additionalProperties": False,
    }
    return schemas


def _request_id_parameter() -> Schema:
    return {
        "name": "request_id",
        "in": "path",
        "required": True,
        "description": "The `request_id` that `POST /upload` returned.",
        "schema": {"type": "string", "format": "uuid"},
        "example": "3f2c8a1e-9b7d-4c55-8e0f-2a6b1d9c7e41",
    }


def _id_responses() -> dict[str, Schema]:
    return {
        "400": {"description": "The request id is not a UUID.", "content": {PROBLEM_JSON: {"schema": _ref("IdError")}}},
        "404": {"description": "No request has this id.", "content": {PROBLEM_JSON: {"schema": _ref("IdError")}}},
    }


def _limits_text(settings: Settings) -> str:
    return (
        f"Limits on this server: {settings.max_csv_bytes} bytes per file (`PIXPRESS_MAX_CSV_BYTES`), "
        f"{settings.max_rows} data rows (`PIXPRESS_MAX_ROWS`), {settings.max_urls_per_row} URLs per row "
        f"(`PIXPRESS_MAX_URLS_PER_ROW`), {settings.max_url_length} characters per URL (`PIXPRESS_MAX_URL_LENGTH`)."
    )


def _upload_operation(settings: Settings) -> Schema:
    return {
        "operationId": "uploadCsv",
        "tags": ["upload"],
        "summary": "Upload a CSV of products and image URLs",
        "description": (
            "Validates the whole file, stores it, records the request as `Queued` and answers; downloading and "
            "compressing happen afterwards. Poll `GET /status/{request_id}` or pass a `webhook_url`.\n\n"
            "CSV rules: columns `Serial Number`, `Product Name`, `Input Image Urls`, matched after trimming and "
            "ignoring case, in any order; extra columns are kept. UTF-8 with or without BOM, CRLF or LF, quoted "
            "cells. URLs are comma-separated inside the cell, whitespace around them ignored. Every row needs a "
            "serial number unique in the file, a product name and at least one absolute http/https URL. "
            f"{_limits_text(settings)}\n\n"
            "A refused file stores and queues nothing. The answer lists every problem found (up to "
            f"{settings.max_reported_errors}), each with `row` (1 = first data row, 0 = header or whole file), "
            "`column` and `message`."
        ),
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Repeat an upload safely: the same key with the same file answers with the same `request_id` "
                    "and starts nothing new; the same key with a different file is refused with 422. 1 to 255 "
                    "printable ASCII characters."
                ),
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
                "example": "order-2024-06-01-batch-7",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "contentMediaType": "text/csv",
                                "description": "The CSV file (any text content type; images, PDFs, archives "
                                "and files containing NUL bytes are refused with 415).",
                            },
                            "webhook_url": {
                                "type": "string",
                                "format": "uri",
                                "maxLength": settings.max_url_length,
                                "description": "Absolute http(s) URL POSTed once the request is final.",
                            },
                        },
                    },
                    "encoding": {"file": {"contentType": "text/csv"}},
                }
            },
        },
        "responses": {
            "200": _example(
                _json_response("Accepted: the CSV is stored and processing has started.", _ref("UploadAccepted")),
                JSON,
                {
                    "message": ACCEPTED_MESSAGE,
                    "request_id": "3f2c8a1e-9b7d-4c55-8e0f-2a6b1d9c7e41",
                    "status_url": "/status/3f2c8a1e-9b7d-4c55-8e0f-2a6b1d9c7e41",
                },
            ),
            "400": _example(
                _problem_response(
                    "The file breaks a CSV rule (`errors` lists every problem), is empty, is not UTF-8, the "
                    "multipart body is malformed, the `file` field is missing or repeated, or `webhook_url` / "
                    "`Idempotency-Key` is invalid."
                ),
                PROBLEM_JSON,
                {
                    "type": "https://pixpress.dev/problems/invalid-csv",
                    "title": "Invalid CSV",
                    "status": 400,
                    "detail": "2 problem(s) found",
                    "errors": [
                        {"row": 3, "column": "Serial Number", "message": "serial number 'A-1' appears more than once"},
                        {
                            "row": 7,
                            "column": "Input Image Urls",
                            "message": "URL scheme 'ftp' is not allowed (only http and https): 'ftp://img/1.jpg'",
                        },
                    ],
                    "row_numbering": "row 1 is the first data row; row 0 is the header",
                },
            ),
            "413": _problem_response("The file is over the byte limit or the row limit."),
            "415": _problem_response(
                "The body is not multipart/form-data, or the file is not CSV text (binary content, or sent as an "
                "image, PDF, archive …)."
            ),
            "408": _problem_response("The upload body did not arrive within `PIXPRESS_API_BODY_TIMEOUT`."),
            "409": _problem_response(
                "Another upload with the same Idempotency-Key failed while this one ran; send it again."
            ),
            "422": _problem_response("The Idempotency-Key was already used with a different file."),
        },
    }


def _example(response: Schema, media_type: str, example: Any) -> Schema:
    response["content"][media_type]["example"] = example
    return response


def _get(operation_id: str, tag: str, summary: str, description: str, responses: dict[str, Schema]) -> Schema:
    return {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "responses": responses,
    }


def _paths(settings: Settings) -> dict[str, Schema]:
    status_200 = _json_response("The request's status and progress.", _ref("Status"))
    return {
        "/upload": {"post": _upload_operation(settings)},
        "/status/{request_id}": {
            "parameters": [_request_id_parameter()],
            "get": _get(
                "getStatus",
                "requests",
                "Status and progress of a request",
                "`output_csv_url` appears once the output CSV exists, `error` when the request `Failed`.",
                {"200": status_200, **_id_responses()},
            ),
        },
        "/requests/{request_id}": {
            "parameters": [_request_id_parameter()],
            "get": _get(
                "getRequest",
                "requests",
                "Status plus webhook delivery history",
                "Every webhook attempt with its time, HTTP status or error, and duration.",
                {"200": _json_response("The request in detail.", _ref("RequestDetail")), **_id_responses()},
            ),
        },
        "/requests/{request_id}/products": {
            "parameters": [_request_id_parameter()],
            "get": {
                **_get(
                    "listProducts",
                    "requests",
                    "Product records of a request, in row order",
                    "One record per CSV data row with its input URLs, output URLs (one slot per input URL) and "
                    "per-image errors. Products appear once the fan-out has stored them. Follow `next` to page; after "
                    "retention (`PIXPRESS_RETENTION_DAYS`) a request and its products are gone (404).",
                    {
                        "200": _json_response("One page of products.", _ref("ProductsPage")),
                        "400": {
                            "description": "The request id is not a UUID (`IdError`), or `offset`/`limit` are out "
                            "of range.",
                            "content": {PROBLEM_JSON: {"schema": {"anyOf": [_ref("IdError"), _ref("Problem")]}}},
                        },
                        "404": _id_responses()["404"],
                    },
                ),
                "parameters": [
                    {
                        "name": "offset",
                        "in": "query",
                        "required": False,
                        "description": "Rows before the page: the page holds rows offset+1 .. offset+limit (rows "
                        "are numbered 1..N without gaps, so this is the number of products skipped). Pages are read "
                        "by row key, so any offset costs the same.",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Products per page.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    },
                ],
            },
        },
        "/requests/{request_id}/output.csv": {
            "parameters": [_request_id_parameter()],
            "get": _get(
                "getOutputCsv",
                "requests",
                "Download the output CSV",
                "Redirects to the output CSV: the input rows in input order with `Output Image Urls` (one slot per "
                "input URL) and `Errors` columns.",
                {
                    "302": {
                        "description": "The output CSV is at `Location`.",
                        "headers": {
                            "Location": {
                                "required": True,
                                "description": "Absolute URL of the CSV.",
                                "schema": {"type": "string", "format": "uri"},
                            }
                        },
                    },
                    **_id_responses(),
                    "409": _problem_response("The request has no output CSV yet (it is not final)."),
                },
            ),
        },
        "/healthz": {
            "get": {
                **_get(
                    "health",
                    "operations",
                    "Health of the API and its servers",
                    "Probes RabbitMQ, MongoDB and MinIO. Never needs an API key.",
                    {
                        "200": _json_response("Everything answers.", _ref("Health")),
                        "503": _json_response("Something does not answer; `checks` says what.", _ref("Health")),
                    },
                ),
                "security": [],
            }
        },
        "/metrics": {
            "get": {
                **_get(
                    "metrics",
                    "operations",
                    "Prometheus metrics of this process",
                    "Counters, histograms and process metrics in the Prometheus text format (docs/observability.md). "
                    "Never needs an API key, like `/healthz`: keep it off the public side of your proxy.",
                    {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                ),
                "security": [],
            }
        },
        OPENAPI_PATH: {
            "get": {
                **_get(
                    "openapi",
                    "operations",
                    "This OpenAPI document",
                    "Needs the API key when the server has one, like every route but `/healthz`.",
                    {"200": _json_response("OpenAPI 3.1 document.", {"type": "object"})},
                ),
            }
        },
        DOCS_PATH: {
            "get": {
                **_get(
                    "docs",
                    "operations",
                    "Human-readable API documentation",
                    "This document rendered as one self-contained HTML page. Needs the API key when the server "
                    "has one (a browser cannot send `X-API-Key` by itself: save it with curl and open the file).",
                    {"200": {"description": "HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
                ),
            }
        },
    }


def _add_auth(paths: dict[str, Schema]) -> None:
    unauthorized = _problem_response("The `X-API-Key` header is missing or wrong.")
    for item in paths.values():
        for method, operation in item.items():
            if method == "parameters" or operation.get("security") == []:
                continue
            operation["responses"]["401"] = unauthorized


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a server running with ``settings``."""
    paths = _paths(settings)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "pixpress API",
            "version": "1.0.0",
            "summary": "Upload a CSV of product image URLs; get quality-50 images and an output CSV back.",
            "description": (
                "Upload a CSV with `POST /upload` and keep the `request_id`. Poll `GET /status/{request_id}` "
                "(or pass `webhook_url` and wait for the POST), then download the output CSV from "
                "`output_csv_url`. Errors are RFC 9457 `application/problem+json`; those about a request id "
                "also carry the seed API's `error` member.\n\n"
                + (
                    "This server requires an `X-API-Key` header on every route except `/healthz`, "
                    "`/openapi.json` and `/docs`."
                    if settings.api_key is not None
                    else "This server is open: it needs no API key (`PIXPRESS_API_KEY` is not set)."
                )
            ),
            "x-pixpress-limits": {
                "max_csv_bytes": settings.max_csv_bytes,
                "max_rows": settings.max_rows,
                "max_urls_per_row": settings.max_urls_per_row,
                "max_url_length": settings.max_url_length,
                "max_reported_errors": settings.max_reported_errors,
            },
        },
        "servers": [{"url": "/", "description": "this server"}],
        "tags": [
            {"name": "upload", "description": "Submit work."},
            {"name": "requests", "description": "Follow a request and fetch its results."},
            {"name": "operations", "description": "Health and documentation."},
        ],
        "paths": paths,
        "components": {
            "schemas": _schemas(settings),
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
    if settings.api_key is not None:
        document["security"] = [{"ApiKey": []}]
        _add_auth(paths)
    return document
