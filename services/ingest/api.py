"""The HTTP API: handlers for the routes of services/ingest/routes.py, the API-key middleware and the read-only
views over MongoDB. Every body is a model of shared/api_models.py."""

from __future__ import annotations

import hmac
import re
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from services.ingest import routes
from services.ingest.console import OPEN_RESOURCES as CONSOLE_RESOURCES
from services.ingest.console import console_routes, setup_templates
from services.ingest.docs import OPEN_RESOURCES as DOCS_RESOURCES
from services.ingest.docs import docs_routes
from services.ingest.listing import ListingNotReady, Position, newest_requests
from services.ingest.openapi import Operation, build_openapi
from services.ingest.problems import Handler, problem, problem_middleware, request_id_error, request_id_of
from services.ingest.product_pages import all_rows, failed_rows
from services.ingest.records import product_view, request_detail, status_view
from services.ingest.thumbnails import Thumbnails
from services.ingest.upload import UploadHandler
from shared.api_models import ProductsPage, RequestsPage, json_body
from shared.database import Database, find_by_ids, product_id, result_id
from shared.lifecycle import is_open
from shared.metrics import count_uploads
from shared.runtime import HealthCheck, health_routes
from shared.settings import Settings

# Served without the key: the operations the route table marks open (the health probe, the metrics Prometheus
# scrapes, the docs page and the console's pages; docs/security.md says why each) and the files of the docs page and
# of the console (services/ingest/docs.py, services/ingest/console/): they hold nothing about the API or its data
_OPEN_RESOURCES = (
    frozenset(operation.path for operation in routes.OPERATIONS if operation.open) | DOCS_RESOURCES | CONSOLE_RESOURCES
)
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def api_key_middleware(settings: Settings) -> Middleware:
    """With ``PIXPRESS_API_KEY`` set every route but the open ones (health, metrics, the docs and console shells) needs
    ``X-API-Key``, the OpenAPI document included; unset, all is open. Decided on the route that matched, never on
    the raw path."""
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        open_route = resource is not None and resource.canonical in _OPEN_RESOURCES
        if expected is not None and not open_route:
            given = request.headers.get("X-API-Key", "").encode()
            if not hmac.compare_digest(given, expected):
                return problem(401, "unauthorized", "Unauthorized", "a valid X-API-Key header is required")
        return await handler(request)

    return middleware


class ReadViews:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _load(self, request: web.Request) -> dict:
        request_id = request_id_of(request)
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

    async def list_requests(self, request: web.Request) -> web.Response:
        """Newest first, by cursor (services/ingest/listing.py); live counts of the open requests on the page come
        from one ``$in`` on ``progress``."""
        raw_limit = request.query.get("limit", str(routes.DEFAULT_REQUESTS_PAGE))
        if not _INTEGER.fullmatch(raw_limit) or not (1 <= int(raw_limit) <= routes.MAX_REQUESTS_PAGE):
            return problem(400, "bad-paging", "Bad paging", f"limit must be an integer 1 to {routes.MAX_REQUESTS_PAGE}")
        limit = int(raw_limit)
        before: Position | None = None
        if "before" in request.query:
            try:
                before = Position.from_cursor(request.query["before"])
            except ValueError:
                return problem(400, "bad-cursor", "Bad cursor", "before must be the cursor of a previous page's next")
        try:
            page = await newest_requests(self.db, limit, before)
        except ListingNotReady:
            detail = "the server is still indexing the requests it kept from before; try again soon"
            return problem(503, "listing-not-ready", "Listing not ready", detail)
        open_ids = [document["_id"] for document in page.requests if is_open(document["status"])]
        live = {document["_id"]: document for document in await find_by_ids(self.db.progress, open_ids)}
        body = RequestsPage(
            items=[status_view(document, live.get(document["_id"])) for document in page.requests],
            next=f"{routes.LIST.path}?limit={limit}&before={page.next.cursor()}" if page.next else None,
        )
        return web.json_response(json_body(body))

    async def detail(self, request: web.Request) -> web.Response:
        document = await self._load(request)
        deliveries = await self.db.webhooks.find_one({"_id": document["_id"]})
        return web.json_response(json_body(request_detail(document, await self._live(document), deliveries)))

    async def products(self, request: web.Request) -> web.Response:
        """One page of products in row order, all of them or (``failed=true``) those with a failed image; ``offset``
        k means the page starts after row k. Rows and their results are read by key (services/ingest/
        product_pages.py), so the cost of a page depends on its own size only, not on the offset, the request's
        size or the database's history."""
        document = await self._load(request)
        raw_offset, raw_limit = request.query.get("offset", "0"), request.query.get("limit", "100")
        if not (_INTEGER.fullmatch(raw_offset) and _INTEGER.fullmatch(raw_limit)):  # int() also takes "1_0", " ٣"
            return problem(400, "bad-paging", "Bad paging", "offset and limit must be integers")
        offset, limit = int(raw_offset), int(raw_limit)
        if not (0 <= offset <= routes.MAX_OFFSET) or not (1 <= limit <= routes.MAX_PAGE):
            detail = f"0 <= offset <= {routes.MAX_OFFSET} and 1 <= limit <= {routes.MAX_PAGE}"
            return problem(400, "bad-paging", "Bad paging", detail)
        raw_failed = request.query.get("failed", "false")
        if raw_failed not in ("true", "false"):
            return problem(400, "bad-filter", "Bad filter", "failed must be true or false")
        failed = raw_failed == "true"
        request_id = document["_id"]
        total = document.get("products_total", 0)
        if failed:
            selection = await failed_rows(self.db.results, request_id, offset, limit, total)
        else:
            selection = all_rows(offset, limit, total)
        products = await find_by_ids(self.db.products, [product_id(request_id, row) for row in selection.rows])
        products.sort(key=lambda product: product["row"])
        slots = [
            result_id(request_id, product["row"], index)
            for product in products
            for index in range(len(product["input_image_urls"]))
        ]
        by_row: dict[int, list[dict]] = {}
        for result in await find_by_ids(self.db.results, slots):
            by_row.setdefault(result["row"], []).append(result)
        # rows the fan-out has not stored yet come again on the next page
        following = selection.searched_to if failed else (products[-1]["row"] if products else offset)
        query = f"failed=true&offset={following}" if failed else f"offset={following}"
        page = ProductsPage(
            request_id=request_id,
            offset=offset,
            limit=limit,
            total=total,
            items=[product_view(product, by_row.get(product["row"], [])) for product in products],
            failed=failed,
            next=f"/requests/{request_id}/products?{query}&limit={limit}" if following < total else None,
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
    thumbnails = Thumbnails(settings, db, upload.storage)
    app.cleanup_ctx.append(thumbnails.lifetime)
    setup_templates(app)
    handlers: list[tuple[Operation, Handler]] = [
        (routes.UPLOAD, upload.__call__),  # a bound coroutine method: aiohttp deprecates other callables
        (routes.STATUS, views.status),
        (routes.LIST, views.list_requests),
        (routes.DETAIL, views.detail),
        (routes.PRODUCTS, views.products),
        (routes.THUMBNAIL, thumbnails.handle),
        (routes.OUTPUT_CSV, views.output_csv),
    ]
    app.add_routes(web.route(operation.method, operation.path, handler) for operation, handler in handlers)
    app.add_routes([*health_routes(check), openapi_route(settings), *docs_routes(), *console_routes()])
    return app
