"""What the console reads from the API, against the running stack: the products page's failed filter, image
formats per image, previews (original through the SSRF guard, compressed from storage) and the open page shells."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image
from pydantic import SecretStr

from services.aggregator.tracker import result_document
from services.ingest.console import CSP
from services.ingest.csv_parser import ProductRow
from services.ingest.product_pages import MAX_SEARCHED_ROWS
from services.ingest.records import product_document
from shared.messages import ImageResult
from shared.settings import Settings
from tests.support.apps import serve_api
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.photos import encode, photo, photo_bytes
from tests.support.servers import ImageHost
from tests.support.staged import request_document


async def products(http: aiohttp.ClientSession, request_id: str, query: str) -> tuple[int, dict]:
    async with http.get(f"{API}/requests/{request_id}/products?{query}") as response:
        return response.status, await response.json()


async def test_the_failed_filter_pages_the_rows_with_a_failed_image_in_row_order(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    small = image_host.add("small.jpg", encode(photo("coffee.png").convert("RGB").resize((32, 24)), "JPEG"))
    failing = {2, 70, 71, 140}  # across three buckets of 64 rows
    rows = [
        (f"R{row}", f"Product {row}", [image_host.url(f"/img/gone-{row}.jpg") if row in failing else small])
        for row in range(1, 141)
    ]
    response = await upload(http, csv_text(rows))
    request_id = (await response.json())["request_id"]
    await wait_final(http, request_id)

    pages: list[list[int]] = []
    query = "failed=true&offset=0&limit=2"
    while True:
        status, page = await products(http, request_id, query)
        assert status == 200, page
        assert page["failed"] is True
        pages.append([item["row"] for item in page["items"]])
        for item in page["items"]:
            assert [image["state"] for image in item["images"]] == ["failed"]
            assert "HTTP 404" in item["images"][0]["error"]
        if "next" not in page:
            break
        query = page["next"].split("?", 1)[1]
    assert pages == [[2, 70], [71, 140]]

    status, everything = await products(http, request_id, "failed=true&limit=100")
    assert [item["row"] for item in everything["items"]] == sorted(failing)
    status, plain = await products(http, request_id, "offset=0&limit=3")
    assert plain["failed"] is False and [item["row"] for item in plain["items"]] == [1, 2, 3]
    done = plain["items"][0]["images"][0]
    assert (done["state"], done["format_in"], done["format_out"]) == ("done", "JPEG", "JPEG")
    assert done["bytes_in"] > 0 and done["bytes_out"] > 0
    assert set(done["thumbnails"]) == {"original", "compressed"}
    status, refusal = await products(http, request_id, "failed=yes")
    assert status == 400 and refusal["type"].endswith("/bad-filter")


async def test_one_failed_page_searches_a_bounded_number_of_rows(stack: str, http: aiohttp.ClientSession, mongo: Any):
    """A request of 200,000 rows with failures in rows 1 and 150,000 only, staged in the database: the pages say
    where they stopped, each after at most MAX_SEARCHED_ROWS rows, and the second failure is found on its own page."""
    request_id = str(uuid.uuid4())
    total = 200_000
    document = request_document(request_id, products=total, images=total)
    document.update(status="Completed", fanout_complete=True)
    await mongo.requests.insert_one(document)
    failed_rows = (1, 150_000)
    try:
        for row in failed_rows:
            product = product_document(request_id, ProductRow(row, f"S{row}", f"P{row}", ["https://example.com/x.jpg"]))
            await mongo.products.insert_one(product)
            result = ImageResult(
                request_id=request_id, product_id=product["_id"], row=row, index=0, ok=False, error="HTTP 404"
            )
            await mongo.results.insert_one(result_document(result))
        offsets, found = [], []
        query = "failed=true&limit=5"
        while query:
            status, page = await products(http, request_id, query)
            assert status == 200, page
            offsets.append(page["offset"])
            found.append([item["row"] for item in page["items"]])
            query = page["next"].split("?", 1)[1] if "next" in page else ""
        assert found[0] == [1] and [150_000] in found and [row for rows in found for row in rows] == list(failed_rows)
        assert all(b - a <= MAX_SEARCHED_ROWS for a, b in zip(offsets, [*offsets[1:], total], strict=True))
        assert len(offsets) == -(-total // MAX_SEARCHED_ROWS)  # pages of 65,536 rows until the end
    finally:
        await mongo.requests.delete_one({"_id": request_id})
        await mongo.products.delete_many({"request_id": request_id})
        await mongo.results.delete_many({"request_id": request_id})


@pytest_asyncio.fixture(scope="module")
async def finished(stack: str) -> AsyncIterator[tuple[str, ImageHost]]:
    """A finished request: row 1 is a real photo (PNG, 512x512), row 2 an image its host no longer has."""
    host = ImageHost()
    await host.start()
    astronaut = host.add("astronaut.png", photo_bytes("astronaut.png"), "image/png")
    async with aiohttp.ClientSession() as http:
        rows = [("P-1", "Astronaut", [astronaut]), ("P-2", "Gone", [host.url("/img/gone.jpg")])]
        response = await upload(http, csv_text(rows))
        request_id = (await response.json())["request_id"]
        assert (await wait_final(http, request_id))["status"] == "Completed"
    yield request_id, host
    await host.stop()


async def thumb(http: aiohttp.ClientSession, base: str, path: str) -> tuple[int, str, bytes]:
    async with http.get(f"{base}{path}") as response:
        return response.status, response.content_type, await response.read()


async def test_previews_are_small_webp_of_the_original_and_of_the_compressed_image(
    http: aiohttp.ClientSession, finished: tuple[str, ImageHost]
):
    request_id, host = finished
    base = f"/requests/{request_id}/images"
    hits = host.hits["astronaut.png"]
    for version in ("original", "compressed"):
        status, content_type, body = await thumb(http, API, f"{base}/1/0/thumb?v={version}")
        assert (status, content_type) == (200, "image/webp"), body[:300]
        preview = Image.open(io.BytesIO(body))
        assert preview.format == "WEBP" and preview.size == (240, 240)  # 512x512 scaled to the 240 box
    assert host.hits["astronaut.png"] == hits + 1  # the original was downloaded once, by ingest
    assert (await thumb(http, API, f"{base}/1/0/thumb?v=original"))[0] == 200
    assert host.hits["astronaut.png"] == hits + 1  # and then served from the cache

    status, _, body = await thumb(http, API, f"{base}/2/0/thumb?v=compressed")
    assert status == 404, body
    status, _, body = await thumb(http, API, f"{base}/2/0/thumb?v=original")
    assert status == 502 and b"HTTP 404" in body, body
    for path, expected in ((f"{base}/1/5/thumb", 404), (f"{base}/0/0/thumb", 400), (f"{base}/1/0/thumb?v=big", 400)):
        assert (await thumb(http, API, path))[0] == expected, path


async def test_an_original_preview_is_fetched_through_the_ssrf_guard(finished: tuple[str, ImageHost]):
    """With the guard on, ingest refuses to fetch the original from 127.0.0.1, and never contacts the host."""
    request_id, host = finished
    hits = dict(host.hits)
    async with (
        serve_api(Settings(allow_private_urls=False)) as client,
        client.get(f"/requests/{request_id}/images/1/0/thumb?v=original") as response,
    ):
        body = await response.json()
        assert response.status == 502, body
    assert body["type"].endswith("/original-unavailable")
    assert "not allowed" in body["detail"], body
    assert dict(host.hits) == hits


async def test_the_console_shells_are_open_and_strict_while_its_data_needs_the_key(finished: tuple[str, ImageHost]):
    request_id, _host = finished
    async with serve_api(Settings(api_key=SecretStr("shell-key"))) as client:
        for path in ("/", f"/console/requests/{request_id}"):
            async with client.get(path) as response:
                page = await response.text()
                assert response.status == 200 and response.content_type == "text/html"
                assert response.headers["Content-Security-Policy"] == CSP
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert "Astronaut" not in page  # a shell: nothing about the request
        async with client.get("/console/requests/not-a-uuid") as response:
            assert response.status == 400
        async with client.get("/console/assets/request.js") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
        for path in ("/console/assets/..%2F__init__.py", "/console/assets/missing.js"):
            async with client.get(path) as response:
                assert response.status == 404, path
        data = (f"/requests/{request_id}/products", f"/requests/{request_id}/images/1/0/thumb?v=compressed")
        for path in data:
            async with client.get(path) as response:
                assert response.status == 401, path
            async with client.get(path, headers={"X-API-Key": "shell-key"}) as response:
                assert response.status == 200, path


@pytest.mark.parametrize("version", ["original", "compressed"])
async def test_previews_can_be_cached_by_the_browser_only(
    http: aiohttp.ClientSession, finished: tuple[str, ImageHost], version: str
):
    request_id, _host = finished
    async with http.get(f"{API}/requests/{request_id}/images/1/0/thumb?v={version}") as response:
        assert response.status == 200
        assert response.headers["Cache-Control"].startswith("private, max-age=")
