"""The HTTP API: routes, API-key middleware and the read-only views over MongoDB."""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.ingest.docs_page import render_docs
from services.ingest.openapi import DOCS_PATH, OPENAPI_PATH, build_openapi
from services.ingest.problems import Handler, problem, problem_error, problem_middleware
from services.ingest.records import product_view, status_view, webhook_view
from services.ingest.upload import UploadHandler
from shared.database import Database, find_by_ids, product_id, result_id
from shared.metrics import count_uploads
from shared.runtime import HealthCheck, health_routes
from shared.settings import Settings

# the documents describe every route and limit, so they need the key too; only the health probe and the metrics
# (which Prometheus scrapes without headers) are open
_OPEN_PATHS = frozenset({"/healthz", "/metrics"})
_DOCS_HINT = (
    "a valid X-API-Key header is required; a browser cannot send one by itself: "
    f"curl -H 'X-API-Key: ...' <server>{DOCS_PATH} > pixpress-docs.html, then open the file"
)
MAX_PAGE = 500
_INTEGER = re.compile(r"-?[0-9]{1,19}")
MAX_OFFSET = 2**31 - 1  # larger skips overflow MongoDB's 64-bit integers (a 500); no request has that many rows

def api_key_middleware(settings: Settings) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """With ``PIXPRESS_API_KEY`` set every route but the health check needs ``X-API-Key`` (the OpenAPI document
    and ``/docs`` included); unset, all is open."""
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and request.path not in _OPEN_PATHS:
            given = request.headers.get("X-API-Key", "").encode()
            if not hmac.compare_digest(given, expected):
                detail = _DOCS_HINT if request.path == DOCS_PATH else "a valid X-API-Key header is required"
                return problem(401, "unauthorized", "Unauthorized", detail)
        return await handler(request)

    return middleware


def _request_id(request: web.Request) -> str:
    raw = request.match_info["request_id"]
    try:
        return str(uuid.UUID(raw))  # not version=4: that would rewrite the version bits, not check them
    except ValueError:
        # problem+json like every other refusal; `error` is the seed's member, kept for its clients
        message = "malformed request id; expected a UUID"
        raise problem_error(
            web.HTTPBadRequest, "malformed-request-id", "Malformed request id", message, error=message
        ) from None


class ReadViews:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _load(self, request: web.Request) -> dict:
        request_id = _request_id(request)
        document = await self.db.requests.find_one({"_id": request_id})
        if document is None:
            message = f"request {request_id} not found"
            raise problem_error(web.HTTPNotFound, "unknown-request", "Unknown request id", message, error=message)
        return document

    async def _status(self, document: dict) -> dict:
        live = await self.db.progress.find_one({"_id": document["_id"]})
        return status_view(document, live)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(await self._status(await self._load(request)))

    async def detail(self, request: web.Request) -> web.Response:
        document = await self._load(request)
        body = await self._status(document)
        body["webhook"] = webhook_view(document, await self.db.webhooks.find_one({"_id": document["_id"]}))
        return web.json_response(body)

    async def products(self, request: web.Request) -> web.Response:
        """One page of products by key: ``offset`` k means rows k+1 .. k+limit.

        Rows are numbered 1..N without gaps (every data row of an accepted CSV is a product), so this is exactly
        "skip k products", but the page is read by its ``_id`` keys (``<request>:<row>``, and ``<request>:<row>:
        <index>`` for its results) instead of skipping through the request: the cost of a page depends on its
        own size only, not on the offset, the request's size or the database's history.
        """
        document = await self._load(request)
        raw_offset, raw_limit = request.query.get("offset", "0"), request.query.get("limit", "100")
        if not (_INTEGER.fullmatch(raw_offset) and _INTEGER.fullmatch(raw_limit)):  # int() also takes "1_0", " ٣"
            return problem(400, "bad-paging", "Bad paging", "offset and limit must be integers")
        offset, limit = int(raw_offset), int(raw_limit)
        if not (0 <= offset <= MAX_OFFSET) or not (1 <= limit <= MAX_PAGE):
            return problem(400, "bad-paging", "Bad paging", f"0 <= offset <= {MAX_OFFSET} and 1 <= limit <= {MAX_PAGE}")
        request_id = document["_id"]
        total = document.get("products_total", 0)
        rows = range(offset + 1, min(offset + limit, total) + 1)
        products = await find_by_ids(self.db.products, [product_id(request_id, row) for row in rows])
        products.sort(key=lambda product: product["row"])
        slots = [
            result_id(request_id, product["row"], index)
            for product in products
            for index in range(len(product["input_image_urls"]))
        ]
        by_row: dict[int, list[dict]] = {}
        for result in await find_by_ids(self.db.results, slots):
            by_row.setdefault(result["row"], []).append(result)
        items = [product_view(product, by_row.get(product["row"], [])) for product in products]
        body: dict = {"request_id": request_id, "offset": offset, "limit": limit, "total": total, "items": items}
        following = products[-1]["row"] if products else offset  # rows the fan-out has not stored yet come again
        if following < total:
            body["next"] = f"/requests/{request_id}/products?offset={following}&limit={limit}"
        return web.json_response(body)

    async def output_csv(self, request: web.Request) -> web.Response:
        document = await self._load(request)
        url = document.get("output_csv_url")
        if not url:
            return problem(
                409,
                "not-ready",
                "Output not ready",
                f"the request is {document['status']}; the output CSV does not exist yet",
            )
        raise web.HTTPFound(url)


def docs_routes(settings: Settings) -> list[web.RouteDef]:
    """``GET /openapi.json`` and ``GET /docs``, both built once from the settings this server runs with."""
    spec = build_openapi(settings)

    async def openapi_json(_request: web.Request) -> web.Response:
        return web.json_response(spec)

    async def docs(request: web.Request) -> web.Response:
        base_url = f"{request.scheme}://{request.host}"
        return web.Response(text=render_docs(spec, base_url), content_type="text/html")

    return [web.get(OPENAPI_PATH, openapi_json), web.get(DOCS_PATH, docs)]


def build_app(settings: Settings, db: Database, upload: UploadHandler, check: HealthCheck) -> web.Application:
    app = web.Application(
        middlewares=[count_uploads, problem_middleware, api_key_middleware(settings)],
        client_max_size=settings.max_csv_bytes + 65536,
    )
    views = ReadViews(db)
    app.add_routes(
        [
            web.post("/upload", upload.__call__),  # a bound coroutine method: aiohttp deprecates other callables
            web.get("/status/{request_id}", views.status),
            web.get("/requests/{request_id}", views.detail),
            web.get("/requests/{request_id}/products", views.products),
            web.get("/requests/{request_id}/output.csv", views.output_csv),
            *health_routes(check),
            *docs_routes(settings),
        ]
    )
    return app
