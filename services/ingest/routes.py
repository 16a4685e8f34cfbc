"""Ingest's HTTP routes as clients see them: what each takes and answers, with which model.

A handler is bound to each of these (services/ingest/api.py, docs.py, shared/runtime.py with shared/metrics.py) and
services/ingest/openapi.py turns them into the OpenAPI document, so a route cannot be served undocumented or
documented unserved (tests/test_openapi.py checks both; Swagger UI's own files are the one exception).
"""

from __future__ import annotations

from services.ingest.openapi import PROBLEM_JSON, Answer, Operation, Schema
from shared.api_models import (
    Health,
    Problem,
    ProductsPage,
    RequestDetail,
    RequestIdProblem,
    RequestsPage,
    StatusView,
    UploadAccepted,
)
from shared.metrics import METRICS_PATH, PROMETHEUS_TEXT

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
CONSOLE_HOME = "/"
CONSOLE_REQUEST = "/console/requests/{request_id}"
MAX_PAGE = 500
MAX_REQUESTS_PAGE = 100
DEFAULT_REQUESTS_PAGE = 20
MAX_OFFSET = 2**31 - 1  # larger skips overflow MongoDB's 64-bit integers (a 500); no request has that many rows

ABOUT = (
    "Upload a CSV of products and image URLs with `POST /upload` and keep the `request_id`. Poll "
    "`GET /status/{request_id}` (or pass `webhook_url` and wait for the POST described under Webhooks), then "
    "download the output CSV from `output_csv_url`. Refusals are RFC 9457 `application/problem+json`; those about a "
    "request id also carry the seed API's `error` member."
)

REQUEST_ID: Schema = {
    "name": "request_id",
    "in": "path",
    "required": True,
    "description": "The `request_id` that `POST /upload` returned.",
    "schema": {"type": "string", "format": "uuid"},
    "example": "3f2c8a1e-9b7d-4c55-8e0f-2a6b1d9c7e41",
}
BAD_ID = Answer("The request id is not a UUID.", RequestIdProblem, PROBLEM_JSON)
UNKNOWN_ID = Answer(
    "No request has this id (or it was deleted after `PIXPRESS_RETENTION_DAYS`).", RequestIdProblem, PROBLEM_JSON
)

UPLOAD = Operation(
    "POST",
    "/upload",
    "uploadCsv",
    "upload",
    "Upload a CSV of products and image URLs",
    "Validates the whole file, stores it, records the request as `Queued` and answers; downloading and compressing "
    "happen afterwards.\n\n"
    "CSV rules: columns `Serial Number`, `Product Name`, `Input Image Urls`, matched after trimming and ignoring case, "
    "in any order; extra columns are kept. UTF-8 with or without BOM, CRLF or LF, quoted cells. URLs are "
    "comma-separated inside the cell. Every row needs a serial number unique in the file, a product name and at "
    "least one absolute http(s) URL. The limits of this server are in `info.x-pixpress-limits`.\n\n"
    "A refused file stores and queues nothing; the answer lists every problem found, each with `row` (1 = first "
    "data row, 0 = header or whole file), `column` and `message`.",
    {
        200: Answer("Accepted: the CSV is stored and processing has started.", UploadAccepted),
        400: Answer(
            "The file breaks a CSV rule (`errors` lists every problem), is empty or not UTF-8, the multipart body is "
            "malformed, the `file` field is missing or repeated, or `webhook_url` / `Idempotency-Key` is invalid.",
            Problem,
            PROBLEM_JSON,
        ),
        408: Answer("The upload body did not arrive within `PIXPRESS_API_BODY_TIMEOUT`.", Problem, PROBLEM_JSON),
        409: Answer(
            "Another upload with the same `Idempotency-Key` failed while this one ran; send it again.",
            Problem,
            PROBLEM_JSON,
        ),
        413: Answer("The file is over the byte limit or the row limit.", Problem, PROBLEM_JSON),
        415: Answer(
            "The body is not multipart/form-data, or the file is not CSV text (binary, or sent as an image, PDF, …).",
            Problem,
            PROBLEM_JSON,
        ),
        422: Answer("The `Idempotency-Key` was already used with a different file.", Problem, PROBLEM_JSON),
    },
    parameters=(
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Repeat an upload safely: the same key with the same file answers with the same "
            "`request_id` and starts nothing new; with a different file it is refused (422).",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
        },
    ),
    request_body={
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "contentMediaType": "text/csv", "description": "The CSV file."},
                        "webhook_url": {
                            "type": "string",
                            "format": "uri",
                            "description": "Absolute http(s) URL POSTed once the request is final.",
                        },
                    },
                },
                "encoding": {"file": {"contentType": "text/csv"}},
            }
        },
    },
)
STATUS = Operation(
    "GET",
    "/status/{request_id}",
    "getStatus",
    "requests",
    "Status and progress of a request",
    "`output_csv_url` appears once the output CSV exists, `error` when the request `Failed`.",
    {200: Answer("The request's status and progress.", StatusView), 400: BAD_ID, 404: UNKNOWN_ID},
    parameters=(REQUEST_ID,),
)
LIST = Operation(
    "GET",
    "/requests",
    "listRequests",
    "requests",
    "Requests, newest first",
    "Every request the server keeps, newest first (by the time it was uploaded), each as "
    "`GET /status/{request_id}` answers it, with live counts while it runs. Follow `next` to page; requests "
    "uploaded while you page never shift the pages still ahead, so paging to the end shows every request that "
    "existed when you began exactly once. Every page costs the same, however many requests the server has "
    "processed.",
    {
        200: Answer("One page of requests.", RequestsPage),
        400: Answer("`limit` is out of range, or `before` is not a cursor this server wrote.", Problem, PROBLEM_JSON),
        503: Answer(
            "The server is still indexing the requests it kept from before this route existed; try again soon.",
            Problem,
            PROBLEM_JSON,
        ),
    },
    parameters=(
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "Requests per page.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_REQUESTS_PAGE, "default": DEFAULT_REQUESTS_PAGE},
        },
        {
            "name": "before",
            "in": "query",
            "required": False,
            "description": "Opaque cursor from the previous page's `next`: the page holds the requests after it.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[A-Za-z0-9_-]+$"},
        },
    ),
)
DETAIL = Operation(
    "GET",
    "/requests/{request_id}",
    "getRequest",
    "requests",
    "Status plus webhook delivery history",
    "Every webhook attempt with its time, HTTP status or error, and duration.",
    {200: Answer("The request in detail.", RequestDetail), 400: BAD_ID, 404: UNKNOWN_ID},
    parameters=(REQUEST_ID,),
)
PRODUCTS = Operation(
    "GET",
    "/requests/{request_id}/products",
    "listProducts",
    "requests",
    "Product records of a request, in row order",
    "One record per CSV data row with its input URLs, output URLs (one slot per input URL) and per-image errors. "
    "Products appear once the fan-out has stored them. Follow `next` to page; every page costs the same, whatever "
    "its offset.",
    {
        200: Answer("One page of products.", ProductsPage),
        400: Answer(
            "The request id is not a UUID (with the seed's `error` member), or `offset`/`limit` are out of range.",
            Problem,
            PROBLEM_JSON,
        ),
        404: UNKNOWN_ID,
    },
    parameters=(
        REQUEST_ID,
        {
            "name": "offset",
            "in": "query",
            "required": False,
            "description": "Rows before the page: the page holds rows offset+1 … offset+limit.",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "Products per page.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
        },
        {
            "name": "failed",
            "in": "query",
            "required": False,
            "description": "`true`: only products with at least one failed image. One page searches a bounded "
            "number of rows, so it may hold fewer than `limit` products (even none) and still have a `next`.",
            "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
        },
    ),
)
THUMBNAIL = Operation(
    "GET",
    "/requests/{request_id}/images/{row}/{index}/thumb",
    "getThumbnail",
    "requests",
    "A small preview of an image, original or compressed",
    "At most 240 pixels on the longer side, WebP, first frame only. The compressed version is read from storage; "
    "the original is fetched by the server from the CSV's URL with the same SSRF guard and limits as the "
    "compressor (a browser showing the preview never contacts that host). Previews are cached for a while.",
    {
        200: Answer(
            "The preview.", media_type="image/webp", schema={"type": "string", "contentMediaType": "image/webp"}
        ),
        400: Answer("Malformed request id, row, index or `v`.", Problem, PROBLEM_JSON),
        404: Answer(
            "No such request, row or image, or no compressed version (pending or failed).", Problem, PROBLEM_JSON
        ),
        502: Answer(
            "The original could not be downloaded, the bytes cannot be previewed (not an image, too many pixels; "
            "`detail` says why), or storage failed.",
            Problem,
            PROBLEM_JSON,
        ),
    },
    parameters=(
        REQUEST_ID,
        {
            "name": "row",
            "in": "path",
            "required": True,
            "description": "CSV data row, 1 = the first.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_OFFSET},
        },
        {
            "name": "index",
            "in": "path",
            "required": True,
            "description": "Position of the URL in the row's `Input Image Urls` cell, from 0.",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
        },
        {
            "name": "v",
            "in": "query",
            "required": False,
            "description": "Which version.",
            "schema": {"type": "string", "enum": ["original", "compressed"], "default": "compressed"},
        },
    ),
)
OUTPUT_CSV = Operation(
    "GET",
    "/requests/{request_id}/output.csv",
    "getOutputCsv",
    "requests",
    "Download the output CSV",
    "Redirects to the output CSV: the input rows in input order with `Output Image Urls` (one slot per input URL) "
    "and `Errors` columns.",
    {
        302: Answer(
            "The output CSV is at `Location`.",
            headers={
                "Location": {
                    "required": True,
                    "description": "Absolute URL of the CSV; a GET needs no credentials.",
                    "schema": {"type": "string", "format": "uri"},
                }
            },
        ),
        400: BAD_ID,
        404: UNKNOWN_ID,
        409: Answer("The request has no output CSV yet (it is not final).", Problem, PROBLEM_JSON),
    },
    parameters=(REQUEST_ID,),
)
HEALTH = Operation(
    "GET",
    "/healthz",
    "health",
    "operations",
    "Health of the API and its servers",
    "Probes RabbitMQ, MongoDB and MinIO. Never needs an API key.",
    {
        200: Answer("Everything answers.", Health),
        503: Answer("Something does not answer; `checks` says what.", Health),
    },
    open=True,
)
METRICS = Operation(
    "GET",
    METRICS_PATH,
    "metrics",
    "operations",
    "Prometheus metrics of this process",
    "This process's counters and histograms (uploads by outcome, requests finished, request duration) and the "
    "Prometheus client's process metrics, in the Prometheus text exposition format, for a Prometheus server to "
    "scrape (docs/observability.md lists every metric). Open like `/healthz`: a scrape job sends no key. It holds "
    "counts and timings only, never a request id, URL or key (docs/security.md), but it shows how busy the service "
    "is: keep it off the public side of your reverse proxy.",
    {
        200: Answer(
            f"The Prometheus text format, answered as `{PROMETHEUS_TEXT}`: `# HELP` and `# TYPE` lines, then one "
            "`name{labels} value` line per sample.",
            media_type="text/plain",
            schema={
                "type": "string",
                "examples": ['# TYPE pixpress_uploads_total counter\npixpress_uploads_total{outcome="accepted"} 3.0\n'],
            },
        )
    },
    open=True,
)
OPENAPI = Operation(
    "GET",
    OPENAPI_PATH,
    "openapi",
    "operations",
    "This OpenAPI document",
    "Generated from the models the server answers with. Needs the API key when the server has one.",
    {200: Answer("OpenAPI 3.1 document.", schema={"type": "object"})},
)
DOCS = Operation(
    "GET",
    DOCS_PATH,
    "docs",
    "operations",
    "Interactive documentation (Swagger UI)",
    "A page that loads this document into Swagger UI, served from this server (no CDN). The page itself holds no "
    "information about the API, so it needs no key; when the server has one, the page asks for it and sends it as "
    "`X-API-Key` to read `/openapi.json` and to try operations out.",
    {200: Answer("HTML page.", media_type="text/html", schema={"type": "string"})},
    open=True,
)

HTML_PAGE = {"type": "string", "contentMediaType": "text/html"}
CONSOLE = Operation(
    "GET",
    CONSOLE_HOME,
    "console",
    "console",
    "The console: upload a CSV, see every request",
    "A page for people (docs/console.md). Like `/docs` it holds no data and needs no key; its script reads this "
    "API, asking for the key once per browser tab when the server has one.",
    {200: Answer("HTML page.", media_type="text/html", schema=HTML_PAGE)},
    open=True,
)
CONSOLE_REQUEST_PAGE = Operation(
    "GET",
    CONSOLE_REQUEST,
    "consoleRequest",
    "console",
    "The console's page of one request",
    "Live progress, totals, the output CSV, webhook attempts and every product with previews of its images. The "
    "page itself holds no data, so it answers the same whether the request exists or not.",
    {200: Answer("HTML page.", media_type="text/html", schema=HTML_PAGE), 400: BAD_ID},
    parameters=(REQUEST_ID,),
    open=True,
)

OPERATIONS = (
    UPLOAD,
    STATUS,
    LIST,
    DETAIL,
    PRODUCTS,
    THUMBNAIL,
    OUTPUT_CSV,
    HEALTH,
    METRICS,
    OPENAPI,
    DOCS,
    CONSOLE,
    CONSOLE_REQUEST_PAGE,
)
