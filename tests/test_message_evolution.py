"""Rolling upgrades (brief §5.7): the running services read messages of a newer version and still dead-letter
broken ones.

A real compressor and aggregator of this checkout run beside the stack on its servers, with a RabbitMQ vhost
and a database of their own (tests/support/guarded.py; private image URLs allowed here, the guard is not what
is tested). The test plays the newer producer: it publishes messages carrying fields these services do not
know, and messages that lack a field they need, and reads the outcome from the database, the queues and MinIO.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio

from services.ingest.csv_parser import ProductRow
from services.ingest.records import product_document
from shared.database import product_id
from shared.messages import RequestFinished, RequestStatus, RoutingKey
from tests.support.guarded import GuardedServices, guarded_database, guarded_services
from tests.support.photos import encode, photo
from tests.support.servers import ImageHost
from tests.support.staged import final_request, insert_as_ingest, request_document

# fields a later version might add: a priority for the task, a thumbnail for the result (not the output cache's
# fields: those are known now)
NEWER_TASK_FIELDS = {"priority": 5, "source_sha256": "9f86d081884c7d659a2feaa0c55ad015"}
NEWER_RESULT_FIELDS = {"thumbnail_url": "http://127.0.0.1:9000/t.jpg", "encoder": {"name": "dct", "version": 2}}


@pytest_asyncio.fixture(scope="module")
async def services() -> AsyncIterator[GuardedServices]:
    async with guarded_services("compressor", "aggregator", PIXPRESS_ALLOW_PRIVATE_URLS="true") as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def database(services: GuardedServices) -> AsyncIterator[Any]:
    async with guarded_database(services) as database:
        yield database


async def fanned_out_request(database: Any, url: str) -> str:
    """A request as ingest leaves it after its fan-out: one product with one image, the task about to go out."""
    request_id = str(uuid.uuid4())
    document = request_document(request_id, products=1, images=1)
    document.update(status=RequestStatus.PROCESSING.value, fanout_complete=True, fanout_cursor=1)
    await insert_as_ingest(database, document)
    await database.products.insert_one(product_document(request_id, ProductRow(1, "E1", "Evolving", [url])))
    return request_id


def task(request_id: str, url: str) -> dict[str, Any]:
    return {"request_id": request_id, "product_id": product_id(request_id, 1), "row": 1, "index": 0, "url": url}


async def finished_event(services: GuardedServices, request_id: str) -> RequestFinished:
    """The aggregator's completion event (no notifier runs here, so it waits in notifier.webhooks)."""
    for _ in range(20):
        event = RequestFinished.model_validate_json(await services.take("notifier.webhooks"))
        if event.request_id == request_id:
            return event
    raise AssertionError(f"no request.finished for {request_id}")


async def dead_lettered(services: GuardedServices, queue: str, body: bytes) -> bool:
    """Whether ``body`` reaches ``queue``'s dead-letter queue (other tests' dead letters are passed over)."""
    for _ in range(20):
        if await services.take(f"{queue}.dlq") == body:
            return True
    return False


async def test_an_image_task_with_fields_the_compressor_does_not_know_is_processed_to_completion(
    services: GuardedServices, database: Any, image_host: ImageHost, http: aiohttp.ClientSession
):
    url = image_host.add(f"{uuid.uuid4().hex}.jpg", encode(photo("chelsea.png"), "JPEG", quality=90))
    request_id = await fanned_out_request(database, url)
    newer_task = {**task(request_id, url), **NEWER_TASK_FIELDS}
    await services.publish_raw(RoutingKey.IMAGE_TODO, json.dumps(newer_task).encode())

    request = await final_request(database, request_id)
    assert request["status"] == RequestStatus.COMPLETED.value, request
    assert (request["images_done"], request["images_failed"]) == (1, 0)
    [result] = await database.results.find({"request_id": request_id}).to_list()
    assert result["ok"] and result["codec"] in ("dct", "pillow"), result
    async with http.get(result["output_url"]) as stored:
        assert stored.status == 200 and (await stored.read())[:2] == b"\xff\xd8"  # a JPEG, compressed and stored
    event = await finished_event(services, request_id)
    assert event.status is RequestStatus.COMPLETED and event.output_csv_url == request["output_csv_url"]


async def test_a_result_with_fields_the_aggregator_does_not_know_completes_its_request(
    services: GuardedServices, database: Any
):
    """The case of ImageResult.codec: a newer compressor's result read by an aggregator that predates the field."""
    request_id = await fanned_out_request(database, "https://img.example/never-fetched.jpg")
    output = f"http://127.0.0.1:9000/pixpress/images/{request_id}/0000001-00.jpg"
    result = {**task(request_id, ""), "ok": True, "output_url": output, "bytes_in": 100, "bytes_out": 40}
    del result["url"]
    await services.publish_raw(RoutingKey.IMAGE_DONE, json.dumps({**result, **NEWER_RESULT_FIELDS}).encode())

    request = await final_request(database, request_id)
    assert request["status"] == RequestStatus.COMPLETED.value, request
    [stored] = await database.results.find({"request_id": request_id}).to_list()
    assert stored["output_url"] == output and "thumbnail_url" not in stored and "encoder" not in stored
    event = await finished_event(services, request_id)
    assert (event.progress.bytes_in, event.progress.bytes_out) == (100, 40)


async def test_an_image_task_missing_a_required_field_is_dead_lettered(services: GuardedServices, database: Any):
    request_id = await fanned_out_request(database, "https://img.example/never-fetched.jpg")
    incomplete = task(request_id, "unused")
    del incomplete["url"]
    body = json.dumps({**incomplete, **NEWER_TASK_FIELDS}).encode()
    await services.publish_raw(RoutingKey.IMAGE_TODO, body)

    assert await dead_lettered(services, "compressor.images", body)
    assert await database.results.count_documents({"request_id": request_id}) == 0
    assert (await database.requests.find_one({"_id": request_id}))["status"] == RequestStatus.PROCESSING.value


async def test_a_result_with_a_malformed_required_field_is_dead_lettered(services: GuardedServices, database: Any):
    request_id = await fanned_out_request(database, "https://img.example/never-fetched.jpg")
    result = {**task(request_id, ""), "ok": "perhaps", "output_url": "http://127.0.0.1:9000/x.jpg"}
    del result["url"]
    body = json.dumps(result).encode()
    await services.publish_raw(RoutingKey.IMAGE_DONE, body)

    assert await dead_lettered(services, "aggregator.results", body)
    assert await database.results.count_documents({"request_id": request_id}) == 0
