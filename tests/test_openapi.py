"""The OpenAPI 3.1 document at /openapi.json is the one generated from the models, matches what the running API
really does, and /docs shows it with Swagger UI served from this server.

schemathesis generates requests from the document (valid and invalid: malformed ids, out-of-range paging,
missing fields) and checks every answer's status, content type, headers and body against it. Those random ids
never exist, so a second test drives one real request to completion and validates every answer it meets on
the way (each status poll, the detail, product pages, the output redirect, refusals, health, metrics) and the webhook
the notifier POSTs, against the same document.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import jsonschema_rs
import pytest
import pytest_asyncio
import requests
import schemathesis
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from swagger_ui_bundle import swagger_ui_path

from services.ingest import routes
from services.ingest.api import build_app
from services.ingest.openapi import build_openapi
from services.ingest.upload import UploadHandler
from shared.settings import Settings
from testkit.stack import service_env
from tests.support.apps import serve_api
from tests.support.client import API, FINAL, csv_text
from tests.support.photos import encode, photo
from tests.support.servers import ImageHost, WebhookReceiver

OPENAPI_URL = f"{API}/openapi.json"
FUZZ = hypothesis.settings(
    max_examples=10,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible, not a flake
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)


def _load_served_document() -> Any:
    """Loaded at import, because schemathesis parametrizes tests at collection time.

    (Its lazy ``from_fixture`` loader touches a pytest attribute pytest 9 removed.) When the API is not up,
    the fuzz tests below are replaced by one failing test that says so.
    """
    try:
        return schemathesis.openapi.from_url(OPENAPI_URL, wait_for_schema=5, timeout=10)
    except Exception as exc:
        return exc


SERVED = _load_served_document()


@pytest.fixture(scope="module")
def existing_request() -> str:
    """A finished request to point generated cases at."""
    return finished_request()


@pytest.fixture(scope="module")
def real_cursor(existing_request: str) -> str:
    """A cursor of `GET /requests` as a client gets it: the `next` of a page of one (two requests exist then)."""
    finished_request()
    following = requests.get(f"{API}/requests?limit=1", timeout=30).json()["next"]
    return following.split("before=", 1)[1]


def finished_request() -> str:
    """Its images are the API's own health page, which every compressor refuses at once as not an image, so the
    request ends Failed within seconds and costs nothing."""
    not_images = ",".join(f"{API}/healthz?image={i}" for i in range(2))
    csv = "Serial Number,Product Name,Input Image Urls\n" + "".join(
        f'E{i},Existing {uuid.uuid4().hex},"{not_images}"\n' for i in range(3)
    )
    accepted = requests.post(f"{API}/upload", files={"file": ("e.csv", csv, "text/csv")}, timeout=30)
    assert accepted.status_code == 200, accepted.text
    request_id = accepted.json()["request_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = requests.get(f"{API}/status/{request_id}", timeout=30).json()
        if status["status"] in ("Completed", "Failed"):
            return request_id
        time.sleep(0.25)
    pytest.fail(f"request {request_id} did not finish: {status}")


if isinstance(SERVED, Exception):

    def test_served_document_loads() -> None:
        pytest.fail(f"could not load {OPENAPI_URL} (is the stack up? `make up`): {SERVED}")

else:

    @SERVED.include(method="GET").parametrize()
    @FUZZ
    def test_get_routes_conform_to_the_document(case: Any, existing_request: str, real_cursor: str) -> None:
        # Random ids never exist, so unless the id itself is the invalid part, half of the cases ask about a
        # real request: its status, detail and product pages are then checked too, with generated paging.
        meta = case.meta
        if (
            "request_id" in (case.path_parameters or {})
            and not (meta and meta.is_negative_at(ParameterLocation.PATH))
            and zlib.crc32(repr(case.query).encode()) % 2 == 0
        ):
            case.path_parameters["request_id"] = existing_request
        # Nor can a schema say which strings are cursors this server wrote: a generated `before` is refused with
        # 400 however well-formed, so half of the cases page from a real cursor instead, with every check.
        excluded = []
        if "before" in (case.query or {}) and not (meta and meta.is_negative_at(ParameterLocation.QUERY)):
            if zlib.crc32(repr(case.query).encode()) % 2 == 0:
                case.query["before"] = real_cursor
            else:
                excluded.append(positive_data_acceptance)
        if case.operation.path != routes.THUMBNAIL.path:
            case.call_and_validate(timeout=30, excluded_checks=excluded)
            return
        # A preview answers 502 by design when the original cannot be fetched or is no image (the existing
        # request's "images" are /healthz pages): every check but "no 5xx" applies, and the 502 must be that one.
        response = case.call_and_validate(timeout=30, excluded_checks=[not_a_server_error])
        if response.status_code >= 500:
            assert response.status_code == 502, response.text
            assert response.json()["type"].endswith(("/no-preview", "/original-unavailable")), response.text

    @SERVED.include(method="POST", path="/upload").parametrize()
    @hypothesis.settings(FUZZ, max_examples=8)
    def test_upload_refusals_conform_to_the_document(case: Any) -> None:
        # A schema cannot say what a valid CSV is, so random "valid" multipart bodies are refused with 400;
        # every other check (status documented, problem+json, body schema, no 5xx) applies.
        case.call_and_validate(timeout=30, excluded_checks=[positive_data_acceptance])


@pytest.fixture(scope="module")
def api_schema(stack: str) -> Any:
    return schemathesis.openapi.from_url(OPENAPI_URL, wait_for_schema=60)


def generated(settings: Settings) -> dict[str, Any]:
    return build_openapi(routes.OPERATIONS, settings, title="pixpress API", description=routes.ABOUT)


def running_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the stack's ingest runs with: its PIXPRESS_* environment, read as it reads it."""
    for name in [name for name in os.environ if name.startswith("PIXPRESS_")]:
        monkeypatch.delenv(name)
    for name, value in service_env().items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_every_served_route_is_documented_and_every_documented_one_served():
    settings = Settings()
    # the app is only built to read its router; nothing is served, so no connections are needed
    app = build_app(settings, None, UploadHandler(settings, None, None, None), None)  # type: ignore[arg-type]
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(operation.method, operation.path) for operation in routes.OPERATIONS}
    docs_assets = {("GET", "/docs/assets/{name}"), ("GET", "/docs/pixpress-docs.js")}  # Swagger UI's own files
    console_assets = {("GET", "/console/assets/{name}")}  # the console's CSS, scripts and icon
    assert served == documented | docs_assets | console_assets


async def test_the_served_document_is_the_generated_one(
    stack: str, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
):
    async with http.get(OPENAPI_URL) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        served = await response.json()
    assert served == generated(running_settings(monkeypatch))
    assert served["openapi"] == "3.1.0"
    assert served["info"]["x-pixpress-limits"]["max_rows"] == int(service_env().get("PIXPRESS_MAX_ROWS", 1_000_000))


@pytest_asyncio.fixture(scope="module")
async def keyed_api() -> AsyncIterator[TestClient]:
    async with serve_api(Settings(api_key=SecretStr("docs-key"))) as client:
        yield client


async def test_a_keyed_server_documents_its_key(keyed_api: TestClient):
    async with keyed_api.get("/openapi.json", headers={"X-API-Key": "docs-key"}) as response:
        served = await response.json()
    assert served == generated(Settings(api_key=SecretStr("docs-key")))
    assert served["security"] == [{"ApiKey": []}]
    operations = [(path, item[method]) for path, item in served["paths"].items() for method in item]
    locked = {path for path, operation in operations if "401" in operation["responses"]}
    assert locked == {path for path, operation in operations if operation.get("security") != []}
    # the probes, and the pages that hold no data
    shells = {"/healthz", "/metrics", "/docs", "/", "/console/requests/{request_id}"}
    assert locked == {op.path for op in routes.OPERATIONS} - shells


def _validate(api_schema: Any, method: str, path: str, response: requests.Response) -> None:
    api_schema[path][method].validate_response(response)


async def _get(url: str, **kwargs: Any) -> requests.Response:
    return await asyncio.to_thread(requests.get, url, timeout=30, **kwargs)


async def _post(url: str, **kwargs: Any) -> requests.Response:
    return await asyncio.to_thread(requests.post, url, timeout=30, **kwargs)


def component(document: dict[str, Any], name: str) -> jsonschema_rs.Validator:
    """A validator for one schema of the document, its references resolved inside the document."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(root)


async def test_every_answer_of_a_real_request_matches_the_document(
    api_schema: Any, image_host: ImageHost, webhook: WebhookReceiver
):
    image_host.delay = 0.3  # long enough for the status polls to see the request before it ends
    small = encode(photo("chelsea.png").convert("RGB").resize((80, 60)), "JPEG", quality=90)
    good = image_host.add("cat.jpg", small)
    missing = image_host.url("/img/missing.jpg")
    rows = [("R1", "Cat", [good, missing]), ("R2", "Cat again", [good])]
    accepted = await _post(
        f"{API}/upload",
        files={"file": ("p.csv", csv_text(rows), "text/csv")},
        data={"webhook_url": webhook.url("/hook")},
    )
    assert accepted.status_code == 200, accepted.text
    _validate(api_schema, "POST", "/upload", accepted)
    request_id = accepted.json()["request_id"]
    seed = {"message": "CSV received and processing started.", "request_id": request_id}  # the seed's exact body
    assert accepted.content == json.dumps({**seed, "status_url": f"/status/{request_id}"}).encode()

    # straight after the upload nothing can be finished: the output CSV is not there yet
    not_ready = await _get(f"{API}/requests/{request_id}/output.csv", allow_redirects=False)
    assert not_ready.status_code == 409
    _validate(api_schema, "GET", "/requests/{request_id}/output.csv", not_ready)

    seen: list[str] = []
    deadline = time.monotonic() + 120
    while not seen or seen[-1] not in FINAL:
        assert time.monotonic() < deadline, seen
        status = await _get(f"{API}/status/{request_id}")
        _validate(api_schema, "GET", "/status/{request_id}", status)
        seen.append(status.json()["status"])
        detail = await _get(f"{API}/requests/{request_id}")
        _validate(api_schema, "GET", "/requests/{request_id}", detail)
        await asyncio.sleep(0.1)
    assert seen[-1] == "Completed" and "Processing" in seen, seen
    final = status.json()
    assert "output_csv_url" in final

    await webhook.wait(timeout=30)
    [delivery] = webhook.deliveries
    served = (await _get(OPENAPI_URL)).json()
    component(served, "WebhookPayload").validate(delivery.json)
    assert delivery.json["progress"] == final["progress"]

    detail = await _get(f"{API}/requests/{request_id}")
    assert detail.json()["webhook"]["state"] == "delivered"
    _validate(api_schema, "GET", "/requests/{request_id}", detail)

    first = await _get(f"{API}/requests/{request_id}/products", params={"limit": 1})
    assert first.status_code == 200 and "next" in first.json()
    _validate(api_schema, "GET", "/requests/{request_id}/products", first)
    second = await _get(API + first.json()["next"])
    assert [p["serial_number"] for p in second.json()["items"]] == ["R2"] and "next" not in second.json()
    _validate(api_schema, "GET", "/requests/{request_id}/products", second)
    assert first.json()["items"][0]["image_errors"][1]  # the missing image's reason is listed

    bad_paging = await _get(f"{API}/requests/{request_id}/products", params={"limit": 501})
    assert bad_paging.status_code == 400
    _validate(api_schema, "GET", "/requests/{request_id}/products", bad_paging)

    redirect = await _get(f"{API}/requests/{request_id}/output.csv", allow_redirects=False)
    assert redirect.status_code == 302 and redirect.headers["Location"] == final["output_csv_url"]
    _validate(api_schema, "GET", "/requests/{request_id}/output.csv", redirect)

    for path in ("/status/{request_id}", "/requests/{request_id}", "/requests/{request_id}/products"):
        unknown = await _get(API + path.replace("{request_id}", str(uuid.uuid4())))
        malformed = await _get(API + path.replace("{request_id}", "not-a-uuid"))
        assert (unknown.status_code, malformed.status_code) == (404, 400)
        _validate(api_schema, "GET", path, unknown)
        _validate(api_schema, "GET", path, malformed)

    health = await _get(f"{API}/healthz")
    assert health.status_code == 200
    _validate(api_schema, "GET", "/healthz", health)

    scraped = await _get(f"{API}/metrics")
    assert scraped.status_code == 200 and 'pixpress_uploads_total{outcome="accepted"}' in scraped.text
    _validate(api_schema, "GET", "/metrics", scraped)


async def test_refusals_match_the_document(api_schema: Any):
    url = f"{API}/upload"
    header = "Serial Number,Product Name,Input Image Urls\n"
    cases: list[tuple[int, dict[str, Any]]] = [
        (400, {"files": {"file": ("a.csv", header + ",x,ftp://a.example/1.jpg\n", "text/csv")}}),
        (400, {"files": {"other": ("a.csv", header, "text/csv")}}),
        (415, {"data": header, "headers": {"Content-Type": "text/csv"}}),
        (415, {"files": {"file": ("a.png", header + ",x,\n", "image/png")}}),
    ]
    for expected, kwargs in cases:
        response = await _post(url, **kwargs)
        assert response.status_code == expected, response.text
        assert response.headers["Content-Type"].startswith("application/problem+json")
        _validate(api_schema, "POST", "/upload", response)
    key = f"doc-{uuid.uuid4()}"
    first = await _post(url, files={"file": ("a.csv", header + "1,x,\n", "text/csv")}, headers={"Idempotency-Key": key})
    assert first.status_code == 400  # refused files leave the key unused
    _validate(api_schema, "POST", "/upload", first)


async def test_docs_page_is_swagger_ui_served_from_this_server(stack: str, http: aiohttp.ClientSession):
    async with http.get(f"{API}/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    # nothing fetched from elsewhere: every script and stylesheet is a path on this server
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    loaded = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', page)
    assert "/docs/assets/swagger-ui-bundle.js" in loaded and "/docs/assets/swagger-ui.css" in loaded, loaded
    for path in loaded:
        async with http.get(API + path) as asset:
            assert asset.status == 200, path
            body = await asset.read()
        if path.startswith("/docs/assets/"):  # the package's own files, unchanged
            assert body == (Path(swagger_ui_path) / path.rsplit("/", 1)[1]).read_bytes(), path
        else:
            assert b"/openapi.json" in body and b"SwaggerUIBundle" in body and b"X-API-Key" in body
            assert not re.search(rb"https?://", body)
    async with http.get(f"{API}/docs/assets/index.html") as other:
        assert other.status == 404  # only the files the page loads are served
