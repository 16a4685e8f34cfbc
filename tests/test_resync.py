"""Catalog re-sync through the running stack (issue 15): an image that has not changed costs almost nothing the
second time, and everything that did change, or was deleted, is made again (docs/cache.md).

Every test makes its own source bytes (photographs with a random comment or text chunk, which the policy strips),
so the first upload of each really runs the codec, whatever earlier runs left in the stack's cache. The image host
counts every request and honours If-None-Match / If-Modified-Since when a body is added with validators.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from services.compressor.compress import compress
from shared.cache import is_shared_object
from shared.database import Database
from shared.settings import Settings
from shared.storage import Storage
from testkit.stack import service_settings
from tests.support import stack as control
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.photos import unique_jpeg, unique_png
from tests.support.servers import ImageHost, ValidatorKind

SETTINGS = service_settings()
pytestmark = pytest.mark.skipif(not SETTINGS.cache, reason="the stack runs with PIXPRESS_CACHE=off")


def fresh_run(body: bytes) -> bytes:
    """What the codec makes of these bytes at the services' settings, here and now."""
    quality, pixels, fast = SETTINGS.jpeg_quality, SETTINGS.max_image_pixels, SETTINGS.jpeg_fast_path
    return compress(body, quality=quality, max_pixels=pixels, jpeg_fast_path=fast).data


def object_key(url: str) -> str:
    return "images/" + url.split("/images/", 1)[1]


@dataclass
class Outcome:
    request_id: str
    status: dict
    items: list[dict]

    @property
    def progress(self) -> dict:
        return self.status["progress"]

    def slot(self, serial: str, index: int = 0) -> tuple[str, str | None]:
        """(output URL, cache kind) of one image."""
        item = next(item for item in self.items if item["serial_number"] == serial)
        assert item["image_errors"][index] is None, item
        return item["output_image_urls"][index], item["image_cache"][index]


@pytest.fixture
async def services() -> AsyncIterator[tuple[Database, Storage]]:
    settings = Settings()
    db = Database(settings)
    yield db, Storage(settings)
    await db.close()


async def process(http: aiohttp.ClientSession, rows: list[tuple[str, str, list[str]]]) -> Outcome:
    request_id = (await (await upload(http, csv_text(rows))).json())["request_id"]
    status = await wait_final(http, request_id)
    assert status["status"] == "Completed", status
    async with http.get(f"{API}/requests/{request_id}/products?limit=500") as answer:
        assert answer.status == 200
        items = (await answer.json())["items"]
    return Outcome(request_id, status, items)


async def read(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url) as answer:
        assert answer.status == 200, url
        return await answer.read()


async def test_the_same_csv_again_only_revalidates_runs_no_codec_and_serves_identical_bytes(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost, services: tuple[Database, Storage]
):
    db, storage = services
    bodies = {"photo.jpg": unique_jpeg("rocket.jpg"), "opaque.png": unique_png("coffee.png")}
    bodies["alpha.png"] = unique_png("astronaut.png", alpha=True)
    kinds: dict[str, ValidatorKind] = {"photo.jpg": "both", "opaque.png": "etag", "alpha.png": "last-modified"}
    urls = {name: image_host.add(name, body, validators=kinds[name]) for name, body in bodies.items()}
    rows = [(name, f"Product {name}", [url]) for name, url in urls.items()]

    first = await process(http, rows)
    assert first.progress["images_cached"] == first.progress["images_revalidated"] == 0
    made = {}
    for name, body in bodies.items():
        url, cache = first.slot(name)
        assert cache is None and is_shared_object(object_key(url))
        assert await read(http, url) == fresh_run(body), name  # the codec's bytes, byte for byte
        made[name] = (url, await storage.stat(object_key(url)))
    assert made["alpha.png"][0].endswith(".webp") and made["opaque.png"][0].endswith(".jpg")
    assert all(not answer.conditional and answer.status == 200 for answer in image_host.served)
    served_before = len(image_host.served)

    second = await process(http, rows)
    assert second.progress["images_done"] == second.progress["images_cached"] == 3
    assert second.progress["images_revalidated"] == 3
    again = image_host.served[served_before:]
    assert len(again) == 3 and all(answer.conditional and answer.status == 304 for answer in again), again
    for name, body in bodies.items():
        url, cache = second.slot(name)
        assert (url, cache) == (made[name][0], "revalidated")
        assert await read(http, url) == fresh_run(body)
        # not written again: same object version, same Last-Modified
        stored, before = await storage.stat(object_key(url)), made[name][1]
        assert stored is not None and before is not None
        assert (stored.last_modified, stored.size) == (before.last_modified, before.size)
    results = await db.results.find({"request_id": second.request_id}).to_list()
    assert {(doc["cached"], doc["cache"]) for doc in results} == {(True, "revalidated")}
    # the codec that made each output is still recorded; that no codec ran now is what "cached" says
    assert {doc["codec"] for doc in results} <= {"dct", "pillow"}
    assert all(doc["bytes_in"] == len(bodies[doc_name(first, doc)]) for doc in results)


def doc_name(outcome: Outcome, result: dict) -> str:
    return next(item["serial_number"] for item in outcome.items if item["row"] == result["row"])


async def test_a_changed_image_is_compressed_again_under_a_new_key(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    url = image_host.add("item.jpg", unique_jpeg("chelsea.png"), validators="both")
    first = await process(http, [("P1", "Cat", [url])])
    changed = unique_jpeg("coffee.png")
    image_host.add("item.jpg", changed, validators="both")  # same URL, new bytes, new ETag and Last-Modified
    second = await process(http, [("P1", "Cat", [url])])
    old_url, _ = first.slot("P1")
    new_url, cache = second.slot("P1")
    assert cache is None and new_url != old_url
    assert await read(http, new_url) == fresh_run(changed)
    assert second.progress["images_cached"] == 0
    assert [(answer.conditional, answer.status) for answer in image_host.served_for("item.jpg")] == [
        (False, 200),
        (True, 200),
    ]


async def test_a_deleted_output_is_computed_again_never_served_broken(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost, services: tuple[Database, Storage]
):
    _db, storage = services
    body = unique_jpeg("hubble_deep_field.jpg")
    url = image_host.add("gone.jpg", body, validators="etag")
    first = await process(http, [("G1", "Stars", [url])])
    output_url, _ = first.slot("G1")
    await storage.delete(object_key(output_url))  # retention, or a bucket emptied by hand

    second = await process(http, [("G1", "Stars", [url])])
    again_url, cache = second.slot("G1")
    assert cache is None and again_url == output_url  # the same content key, written again
    assert await read(http, again_url) == fresh_run(body)
    # first download, the revalidation that found the object gone, the download that made it again
    assert [(answer.conditional, answer.status) for answer in image_host.served_for("gone.jpg")] == [
        (False, 200),
        (True, 304),
        (False, 200),
    ]


async def test_an_origin_without_validators_is_served_from_the_hash(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    body = unique_jpeg("retina.jpg")
    url = image_host.add("plain.jpg", body)  # no ETag, no Last-Modified
    first = await process(http, [("H1", "Eye", [url])])
    second = await process(http, [("H1", "Eye", [url])])
    assert second.slot("H1") == (first.slot("H1")[0], "same_bytes")
    assert second.progress["images_cached"] == 1 and second.progress["images_revalidated"] == 0
    assert [(answer.conditional, answer.status) for answer in image_host.served_for("plain.jpg")] == [(False, 200)] * 2
    assert await read(http, first.slot("H1")[0]) == fresh_run(body)


async def test_two_urls_with_the_same_bytes_share_one_object(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    body = unique_png("motorcycle_left.png")
    one, two = image_host.add("a.png", body, validators="etag"), image_host.add("b.png", body)
    first = await process(http, [("S1", "Bike", [one])])
    second = await process(http, [("S2", "Bike again", [two]), ("S3", "Bike twice", [one, two])])
    shared, _ = first.slot("S1")
    assert second.slot("S2") == (shared, "same_bytes")
    assert second.slot("S3", 0) == (shared, "revalidated")
    assert second.slot("S3", 1) == (shared, "same_bytes")
    assert await read(http, shared) == fresh_run(body)


@pytest.mark.faults
async def test_compressors_killed_mid_batch_lose_no_image(
    stack_api: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    """Known URLs travel in batches; kill -9 every compressor while they revalidate, and every image still settles
    (the batches come back, are split into single tasks on the suspect queue and done there)."""
    body = unique_jpeg("coffee.png")
    urls = [image_host.add(f"k{i}.jpg", body, validators="etag") for i in range(80)]
    rows = [(f"K{i:02d}", f"Mug {i}", [url]) for i, url in enumerate(urls)]
    first = await process(http, rows)
    image_host.delay = 0.3  # each revalidation takes 0.3 s: the batches are in the compressors' hands a while
    request_id = (await (await upload(http, csv_text(rows))).json())["request_id"]
    while not [a for a in image_host.served if a.conditional]:
        await asyncio.sleep(0.05)
    for name in control.compressor_names():
        await control.wait_running(name, control.kill_9(name))
    image_host.delay = 0
    final = await wait_final(http, request_id, timeout=180)
    assert final["status"] == "Completed" and final["progress"]["images_done"] == 80, final
    async with http.get(f"{API}/requests/{request_id}/products?limit=500") as answer:
        items = (await answer.json())["items"]
    assert {url for item in items for url in item["output_image_urls"]} == {first.slot("K00")[0]}
    revalidations = [answer for answer in image_host.served if answer.conditional]
    assert len(revalidations) > 80, "no batch was interrupted: the kill came too late to test anything"
