"""The OpenAPI 3.1 document at /openapi.json matches what the running API really does, and /docs renders it.

schemathesis generates requests from the document (valid and invalid: malformed ids, out-of-range paging,
missing fields) and checks every answer's status, content type, headers and body against it. Those random ids
never exist, so a second test drives one real request to completion and validates every 200/302/409 body it
meets against the same document.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
import zlib
from typing import Any

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from services.ingest.api import build_app
from services.ingest.openapi import build_openapi
from services.ingest.upload import UploadHandler
from shared.settings import Settings
from tests.support.client import API, csv_text, upload, wait_final
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
    """A finished request to point generated cases at. Its images are the API's own health page, which every
    compressor refuses at once as not an image, so the request ends Failed within seconds and costs nothing."""
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
    def test_get_routes_conform_to_the_document(case: Any, existing_request: str) -> None:
        # Random ids never exist, so unless the id itself is the invalid part, half of the cases ask about a
        # real request: its status, detail and product pages are then checked too, with generated paging.
        meta = case.meta
        if (
            "request_id" in (case.path_parameters or {})
            and not (meta and meta.is_negative_at(ParameterLocation.PATH))
            and zlib.crc32(repr(case.query).encode()) % 2 == 0
        ):
            case.path_parameters["request_id"] = existing_request
        case.call_and_validate(timeout=30)

    @SERVED.include(method="POST", path="/upload").parametrize()
    @hypothesis.settings(FUZZ, max_examples=8)
    def test_upload_refusals_conform_to_the_document(case: Any) -> None:
        # A schema cannot say what a valid CSV is, so random "valid" multipart bodies are refused with 400;
        # every other check (status documented, problem+json, body schema, no 5xx) applies.
        case.call_and_validate(timeout=30, excluded_checks=[positive_data_acceptance])


@pytest.fixture(scope="module")
def api_schema(stack: str) -> Any:
    return schemathesis.openapi.from_url(OPENAPI_URL, wait_for_schema=60)


def test_document_lists_every_route_of_the_app():
    settings = Settings()
    # the app is only built to read its router; nothing is served, so no connections are needed
    app = build_app(settings, None, UploadHandler(settings, None, None, None), None)  # type: ignore[arg-type]
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    spec = build_openapi(settings)
    documented = {(method, path) for path, item in spec["paths"].items() for method in item if method != "parameters"}
    assert served == documented
    assert spec["openapi"] == "3.1.0"


async def test_served_document_is_the_one_built_from_settings(stack: str, http: aiohttp.ClientSession):
    async with http.get(OPENAPI_URL) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        served = await response.json()
    for route in ("/upload", "/status/{request_id}", "/requests/{request_id}/products", "/healthz"):
        assert route in served["paths"]
    limits = served["info"]["x-pixpress-limits"]
    assert set(limits) == {"max_csv_bytes", "max_rows", "max_urls_per_row", "max_url_length", "max_reported_errors"}
    assert served["paths"]["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"][
        "required"
    ] == ["file"]


def _validate(api_schema: Any, method: str, path: str, response: requests.Response) -> None:
    api_schema[path][method].validate_response(response)


async def _get(url: str, **kwargs: Any) -> requests.Response:
    return await asyncio.to_thread(requests.get, url, timeout=30, **kwargs)


async def _post(url: str, **kwargs: Any) -> requests.Response:
    return await asyncio.to_thread(requests.post, url, timeout=30, **kwargs)


async def test_real_answers_match_the_document(
    api_schema: Any, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    small = encode(photo("chelsea.png").convert("RGB").resize((80, 60)), "JPEG", quality=90)
    good = image_host.add("cat.jpg", small)
    missing = image_host.url("/img/missing.jpg")
    rows = [("R1", "Cat", [good, missing]), ("R2", "Cat again", [good])]
    accepted = await upload(http, csv_text(rows), webhook_url=webhook.url("/hook"))
    assert accepted.status == 200
    request_id = (await accepted.json())["request_id"]

    # straight after the upload nothing can be finished: the output CSV is not there yet
    not_ready = await _get(f"{API}/requests/{request_id}/output.csv", allow_redirects=False)
    assert not_ready.status_code == 409
    _validate(api_schema, "GET", "/requests/{request_id}/output.csv", not_ready)

    final = await wait_final(http, request_id)
    assert final["status"] == "Completed"
    await webhook.wait(timeout=30)

    status = await _get(f"{API}/status/{request_id}")
    assert status.status_code == 200 and "output_csv_url" in status.json()
    _validate(api_schema, "GET", "/status/{request_id}", status)

    detail = await _get(f"{API}/requests/{request_id}")
    assert detail.status_code == 200, detail.text
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


async def test_docs_page_is_self_contained_and_covers_every_operation(stack: str, http: aiohttp.ClientSession):
    async with http.get(OPENAPI_URL) as response:
        spec = await response.json()
    async with http.get(f"{API}/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    assert page.startswith("<!doctype html>")
    # nothing fetched from elsewhere: no scripts, stylesheets, images, fonts or frames by URL
    assert not re.search(r"<(script|link|img|iframe)\b", page, re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert f'<span class="m {method}">{method}</span>{path}' in page, (method, path)
            assert operation["summary"] in page.replace("&#x27;", "'")
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert "curl -F file=@products.csv" in page
    assert f"{API}/upload" in page
    assert str(spec["info"]["x-pixpress-limits"]["max_rows"]) in page
