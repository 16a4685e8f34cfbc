"""The SSRF guard in the services, on the real servers (issue 11, items 1 and 5).

Spellings of 127.0.0.1 the guard must refuse, above all the two that got through: fullwidth digits and
ideographic full stops. Each is tried where a URL enters (upload: CSV cells and ``webhook_url``) and where it
is used (the compressor's fetch, the notifier's POST), against local servers that count every hit: a refused
URL is never contacted, settles at once with its reason, and is not retried.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from pymongo import AsyncMongoClient

from shared.messages import ImageResults, ImageTask, Progress, RequestFinished, RequestStatus, RoutingKey
from shared.settings import Settings
from shared.timeutil import utcnow
from testkit.stack import service_env
from tests.support.apps import serve_api
from tests.support.guarded import guarded_services
from tests.support.photos import photo_bytes
from tests.support.servers import ImageHost, WebhookReceiver
from tests.support.spellings import FULLWIDTH, IDEOGRAPHIC, LOOPBACK_SPELLINGS, spelled

# --- upload: CSV cells and webhook_url, on an ingest app with the guard on -------------------------------


@pytest_asyncio.fixture(scope="module")
async def guarded_api() -> AsyncIterator[TestClient]:
    async with serve_api(Settings(allow_private_urls=False)) as client:
        yield client


async def upload(client: TestClient, csv: str, webhook_url: str | None = None) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("file", csv.encode(), filename="p.csv", content_type="text/csv")
    if webhook_url is not None:
        form.add_field("webhook_url", webhook_url)
    async with client.post("/upload", data=form) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize("host", list(LOOPBACK_SPELLINGS.values()), ids=list(LOOPBACK_SPELLINGS))
async def test_upload_refuses_an_image_url_spelling_a_private_address(guarded_api: TestClient, host: str):
    csv = f"Serial Number,Product Name,Input Image Urls\nS1,Mug {uuid.uuid4().hex},http://{host}:8999/a\n"
    status, body = await upload(guarded_api, csv)
    assert status == 400, body
    [error] = body["errors"]
    assert (error["row"], error["column"]) == (1, "Input Image Urls")


@pytest.mark.parametrize("host", list(LOOPBACK_SPELLINGS.values()), ids=list(LOOPBACK_SPELLINGS))
async def test_upload_refuses_a_webhook_url_spelling_a_private_address(guarded_api: TestClient, host: str):
    csv = f"Serial Number,Product Name,Input Image Urls\nS1,Mug {uuid.uuid4().hex},https://img.example/a.jpg\n"
    status, body = await upload(guarded_api, csv, webhook_url=f"http://{host}:8999/hook")
    assert status == 400, body
    assert body["type"].endswith("/invalid-webhook-url")


async def test_upload_with_the_guard_on_still_accepts_public_urls(guarded_api: TestClient):
    """The refusals above are the guard's, not an upload that refuses everything."""
    csv = f"Serial Number,Product Name,Input Image Urls\nS1,Mug {uuid.uuid4().hex},http://192.0.2.1.nip.io/a.jpg\n"
    status, body = await upload(guarded_api, csv, webhook_url="https://hooks.example.com/pixpress")
    assert status == 200, body


# --- the compressor and notifier processes with the guard on ---------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def guarded() -> AsyncIterator[Any]:
    async with guarded_services("compressor", "notifier") as services:
        yield services


@pytest.mark.parametrize("host", [FULLWIDTH, IDEOGRAPHIC, "localhost"], ids=["fullwidth", "ideographic", "localhost"])
async def test_guarded_compressor_fails_a_refused_image_at_once_without_fetching_it(
    guarded: Any, image_host: ImageHost, host: str
):
    url = spelled(image_host.add("a.jpg", photo_bytes("rocket.jpg")), host)
    task = ImageTask(request_id=str(uuid.uuid4()), product_id="p", row=1, index=0, url=url)
    await guarded.publish(RoutingKey.IMAGE_TODO, task)
    [result] = ImageResults.model_validate_json(await guarded.take("aggregator.results.batch")).results
    assert result.request_id == task.request_id
    assert not result.ok and result.error is not None
    assert "not allowed" in result.error or "non-ASCII" in result.error, result.error
    assert "after" not in result.error  # "(after N attempts)" would mean it was retried as transient
    assert image_host.hits["a.jpg"] == 0


async def webhook_record(database: str, request_id: str, timeout: float = 30) -> dict[str, Any]:
    client: AsyncMongoClient = AsyncMongoClient(service_env().get("PIXPRESS_MONGO_URL", "mongodb://127.0.0.1:27017/"))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = await client[database].webhooks.find_one({"_id": request_id})
            if record is not None and record.get("state") != "retrying":
                return record
            await asyncio.sleep(0.2)
        raise AssertionError(f"webhook of {request_id} not settled: {record}")
    finally:
        await client.close()


@pytest.mark.parametrize("host", [FULLWIDTH, IDEOGRAPHIC, "localhost"], ids=["fullwidth", "ideographic", "localhost"])
async def test_guarded_notifier_dead_letters_a_refused_webhook_after_one_attempt(
    guarded: Any, webhook: WebhookReceiver, host: str
):
    request_id = str(uuid.uuid4())
    client: AsyncMongoClient = AsyncMongoClient(service_env().get("PIXPRESS_MONGO_URL", "mongodb://127.0.0.1:27017/"))
    try:
        await client[guarded.database].requests.insert_one(
            {"_id": request_id, "status": "Completed", "webhook_url": spelled(webhook.url("/hook"), host)}
        )
    finally:
        await client.close()
    event = RequestFinished(
        request_id=request_id, status=RequestStatus.COMPLETED, progress=Progress(), finished_at=utcnow()
    )
    await guarded.publish(RoutingKey.REQUEST_FINISHED, event)
    record = await webhook_record(guarded.database, request_id)
    assert record["state"] == "dead", record
    [attempt] = record["attempts"]
    assert attempt["refused"] is True and attempt["error"].startswith("refused"), attempt
    dead = json.loads(await guarded.take("notifier.webhooks.dlq"))
    assert dead["request_id"] == request_id
    assert webhook.deliveries == []
