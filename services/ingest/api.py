"""The HTTP API: handlers for the routes of services/ingest/routes.py, the API-key middleware and the read-only
views over MongoDB. Every body is a model of shared/api_models.py."""

from __future__ import annotations

import hmac
import re
import uuid
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from services.ingest import routes
from services.ingest.docs import OPEN_RESOURCES, docs_routes
from services.ingest.openapi import Operation, build_openapi
from services.ingest.problems import Handler, problem, problem_middleware, request_id_error
from services.ingest.records import product_view, request_detail, status_view
from services.ingest.upload import UploadHandler
from shared.api_models import ProductsPage, json_body
from shared.database import Database, find_by_ids, product_id, result_id
from shared.metrics import count_uploads
from shared.runtime import HealthCheck, health_routes
from shared.settings import Settings

# Served without the key: the operations the route table marks open (the health probe, the metrics Prometheus
# scrapes, the docs page; docs/security.md says why each) and the docs page's own files (services/ingest/docs.py)
_OPEN_RESOURCES = frozenset(operation.path for operation in routes.OPERATIONS if operation.open) | OPEN_RESOURCES
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def api_key_middleware(settings: Settings) -> Middleware:
    """With ``PIXPRESS_API_KEY`` set every route but the open ones (health, metrics, the docs shell) needs
    ``X-API-Key``, the OpenAPI document included; unset, all is open. Decided on the route that matched, never on
    the raw path."""
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        is_open = resource is not None and resource.canonical in _OPEN_RESOURCES
        if expected is not None and not is_open:
            given = request.headers.get("X-API-Key", "").encode()
            if not hmac.compare_digest(given, expected):
                return problem(401, "unauthorized", "Unauthorized", "a valid X-API-Key header is required")
        return await handler(request)

    return middleware


def _request_id(request: web.Request) -> str:
    raw = request.match_info["request_id"]
    try:
        return str(uuid.UUID(raw))  # not version=4: that would rewrite the version bits, not check them
    except ValueError:
        # problem+json like every other refusal; `error` is the seed's member, kept for its clients
        message = "malformed request id; expected a UUID"
        raise request_id_error(web.HTTPBadRequest, "malformed-request-id", "Malformed request id", message) from None


class ReadViews:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _load(self, request: web.Request) -> dict:
        request_id = _request_id(request)
        document = await self.db.requests.find_one({"_id": request_id})
        if document is None:
            message = f"request {request_id} not found"
            raise request_id_error(web.HTTPNotFound, "unknown-request", "Unknown request id", message)
        return document

    async def _live(self, document: dict[str, Any]) -> dict[str, Any] | None:
        return await self.db.progress.find_one({"_id": document["_id"]})

    async def status(self, request: web.Request) -> web.Response:
        document = await self._load(request)
        return web.json_response(json_body(status_view(document, await self._live(document))))

    async def detail(self, request: web.Request) -> web.Response:
        document = await self._load(request)
        deliveries = await self.db.webhooks.find_one({"_id": document["_id"]})
        return web.json_response(json_body(request_detail(document, await self._live(document), deliveries)))

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
        if not (0 <= offset <= routes.MAX_OFFSET) or not (1 <= limit <= routes.MAX_PAGE):
            detail = f"0 <= offset <= {routes.MAX_OFFSET} and 1 <= limit <= {routes.MAX_PAGE}"
            return problem(400, "bad-paging", "Bad paging", detail)
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
        following = products[-1]["row"] if products else offset  # rows the fan-out has not stored yet come again
        page = ProductsPage(
            request_id=request_id,
            offset=offset,
            limit=limit,
            total=total,
            items=[product_view(product, by_row.get(product["row"], [])) for product in products],
            next=f"/requests/{request_id}/products?offset={following}&limit={limit}" if following < total else None,
        )
        return web.json_response(json_body(page))

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


def openapi_route(settings: Settings) -> web.RouteDef:
    """``GET /openapi.json``, built once from the settings this server runs with."""
    document = build_openapi(routes.OPERATIONS, settings, title="pixpress API", description=routes.ABOUT)

    async def openapi_json(_request: web.Request) -> web.Response:
        return web.json_response(document)

    return web.get(routes.OPENAPI_PATH, openapi_json)


def build_app(settings: Settings, db: Database, upload: UploadHandler, check: HealthCheck) -> web.Application:
    app = web.Application(
        middlewares=[count_uploads, problem_middleware, api_key_middleware(settings)],
        client_max_size=settings.max_csv_bytes + 65536,
    )
    views = ReadViews(db)
    handlers: list[tuple[Operation, Handler]] = [
        (routes.UPLOAD, upload.__call__),  # a bound coroutine method: aiohttp deprecates other callables
        (routes.STATUS, views.status),
        (routes.DETAIL, views.detail),
        (routes.PRODUCTS, views.products),
        (routes.OUTPUT_CSV, views.output_csv),
    ]
    app.add_routes(web.route(operation.method, operation.path, handler) for operation, handler in handlers)
    app.add_routes([*health_routes(check), openapi_route(settings), *docs_routes()])
    return app
