"""A service that runs for months: retention deletes what expired and nothing else; product pages go by key.

Retention is tested twice, against the real FerretDB and MinIO: once through the stack's own aggregator (``make
test`` runs it with ``PIXPRESS_RETENTION_DAYS``; its sweeper must delete a request the test backdated, and leave a
recent one and a live one alone), and once by running passes of the same code on a scratch database and bucket,
where the budget of a pass and the first pass over a database from before ``finished_hour`` can be watched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from minio import Minio

from services.aggregator.retention import Retention, request_object_prefixes
from services.aggregator.tracker import result_document
from shared.database import Database, finished_fields, product_id
from shared.messages import ImageResult
from shared.settings import Settings
from shared.storage import Storage
from shared.timeutil import utcnow
from testkit.stack import service_env, service_settings
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.photos import encode, photo
from tests.support.scratch import minio_client, scratch_stores
from tests.support.servers import ImageHost, WebhookReceiver

COLLECTIONS = ("requests", "products", "results", "progress", "webhooks", "idempotency_keys")


def stored_objects(client: Minio, bucket: str, request_id: str) -> list[str]:
    return [
        item.object_name
        for prefix in request_object_prefixes(request_id)
        for item in client.list_objects(bucket, prefix=prefix, recursive=True)
    ]


async def traces(db: Database, request_id: str, idempotency_key: str | None = None) -> dict[str, int]:
    """How many documents of each kind a request still has."""
    counts = {
        "requests": await db.requests.count_documents({"_id": request_id}),
        "products": await db.products.count_documents({"request_id": request_id}),
        "results": await db.results.count_documents({"request_id": request_id}),
        "progress": await db.progress.count_documents({"_id": request_id}),
        "webhooks": await db.webhooks.count_documents({"_id": request_id}),
    }
    if idempotency_key is not None:
        counts["idempotency_keys"] = await db.idempotency_keys.count_documents({"_id": idempotency_key})
    return counts


async def backdate(db: Database, request_id: str, moment: datetime) -> None:
    """Make a request look as if it had been created, and if it is finished had finished, at ``moment``."""
    request = await db.requests.find_one({"_id": request_id})
    assert request is not None
    changes: dict[str, Any] = {"created_at": moment, "updated_at": moment}
    if request.get("finished_at") is not None:
        changes.update(finished_fields(moment))
    await db.requests.update_one({"_id": request_id}, {"$set": changes})


@pytest.fixture
async def stack_db() -> AsyncIterator[Database]:
    db = Database(Settings())
    yield db
    await db.close()


def retention_days_of_the_stack() -> int:
    value = service_env().get("PIXPRESS_RETENTION_DAYS")
    if not value:
        pytest.fail("the stack runs without PIXPRESS_RETENTION_DAYS; `make test` sets it (scripts/stack.sh up)")
    return int(value)


async def test_the_aggregator_deletes_expired_requests_everywhere_and_keeps_recent_and_live_ones(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver, stack_db: Database
):
    days = retention_days_of_the_stack()
    settings = Settings()
    minio = minio_client(settings)
    jpeg = image_host.add("cat.jpg", encode(photo("chelsea.png"), "JPEG", quality=90))
    rows = [("R1", "Cat", [jpeg, jpeg]), ("R2", "Cat again", [jpeg])]

    key = f"retention-{uuid.uuid4()}"
    answer = await upload(http, csv_text(rows), webhook_url=webhook.url("/hook"), headers={"Idempotency-Key": key})
    expired = (await answer.json())["request_id"]
    recent = (await (await upload(http, csv_text(rows))).json())["request_id"]
    for request_id in (expired, recent):
        assert (await wait_final(http, request_id))["status"] == "Completed"
    await webhook.wait()
    deadline = time.monotonic() + 10
    while not await stack_db.webhooks.count_documents({"_id": expired}) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # the notifier records the attempt after the POST
    before = await traces(stack_db, expired, key)
    assert before == {"requests": 1, "products": 2, "results": 3, "progress": 0, "webhooks": 1, "idempotency_keys": 1}
    # input CSV and output CSV, and the 3 images unless they are shared outputs of the cache (docs/cache.md)
    cached = service_settings().cache
    assert len(stored_objects(minio, settings.s3_bucket, expired)) == (2 if cached else 5)
    shared = {doc["cache_object"] async for doc in stack_db.results.find({"request_id": expired})} - {None}
    assert len(shared) == (1 if cached else 0)  # one photo, three slots, two requests: one object

    # live: still downloading (the host hangs for ~20 s of retries), created long before the cutoff
    live = (await (await upload(http, csv_text([("L1", "Slow", [image_host.url("/hang")])]))).json())["request_id"]
    deadline = time.monotonic() + 30
    while not await stack_db.requests.count_documents({"_id": live, "fanout_complete": True}):
        assert time.monotonic() < deadline, "the live request's fan-out did not finish"
        await asyncio.sleep(0.1)  # until then ingest writes the request (one writer per document on FerretDB)
    cutoff = utcnow() - timedelta(days=days)
    hour_start = cutoff.replace(minute=0, second=0, microsecond=0)
    # Expired: finished within the cutoff's own hour, before the cutoff. (Retention's cursor may already have
    # passed the hours before it, which no request really finishes in after the fact.)
    await backdate(stack_db, expired, hour_start + (cutoff - hour_start) / 2)
    await backdate(stack_db, recent, cutoff + timedelta(hours=2))
    live_created = (cutoff - timedelta(days=5)).replace(microsecond=0)
    await backdate(stack_db, live, live_created)

    deadline = time.monotonic() + 60
    while await stack_db.requests.count_documents({"_id": expired}) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)

    assert await traces(stack_db, expired, key) == {name: 0 for name in before}
    assert stored_objects(minio, settings.s3_bucket, expired) == []
    async with http.get(f"{API}/status/{expired}") as gone:
        assert gone.status == 404
    survivor = await stack_db.requests.find_one({"_id": live})
    assert survivor is not None and survivor["created_at"] == live_created
    assert (await traces(stack_db, recent))["results"] == 3
    assert len(stored_objects(minio, settings.s3_bucket, recent)) == (2 if cached else 5)
    storage = Storage(settings)
    for key in shared:  # the kept request points to it: retention must not have deleted it
        assert await storage.stat(key) is not None, key
    async with http.get(f"{API}/status/{recent}") as kept:
        assert (await kept.json())["status"] == "Completed"


@pytest.fixture
async def scratch() -> AsyncIterator[tuple[Database, Storage, Settings]]:
    """A database and a bucket of their own, so the passes counted here are the only ones."""
    async with scratch_stores("retention") as stores:
        yield stores


async def write_request(
    db: Database, storage: Storage, request_id: str, *, status: str, finished: datetime | None, images: int
) -> None:
    """A request as the services leave it: request, products, results, webhook record, stored objects."""
    document: dict[str, Any] = {"_id": request_id, "status": status, "created_at": utcnow(), "updated_at": utcnow()}
    if finished is not None:
        document.update(finished_fields(finished))
    await db.requests.insert_one(document)
    await db.products.insert_many(
        [{"_id": product_id(request_id, row), "request_id": request_id, "row": row} for row in range(1, images + 1)]
    )
    results = [
        ImageResult(request_id=request_id, product_id=product_id(request_id, row), row=row, index=0, ok=True)
        for row in range(1, images + 1)
    ]
    await db.results.insert_many([result_document(result) for result in results])
    await db.webhooks.insert_one({"_id": request_id, "state": "delivered", "attempts": []})
    await storage.put_bytes(f"uploads/{request_id}/input.csv", b"csv", "text/csv")
    for row in range(1, images + 1):
        await storage.put_bytes(f"images/{request_id}/{row:07d}-00.jpg", b"jpeg", "image/jpeg")
    await storage.put_bytes(f"outputs/{request_id}/output.csv", b"csv", "text/csv")


async def test_a_pass_deletes_within_its_budget_and_the_next_pass_finishes(scratch):
    db, storage, settings = scratch
    old = utcnow() - timedelta(days=40)
    expired = [str(uuid.uuid4()) for _ in range(3)]
    for request_id in expired:
        # 12 products + 12 results + webhook + request = 26 documents, 14 objects each
        await write_request(db, storage, request_id, status="Completed", finished=old, images=12)
    kept = str(uuid.uuid4())
    await write_request(db, storage, kept, status="Processing", finished=None, images=2)
    retention = Retention(db, storage, days=30, pass_budget=25)

    passes = 0
    while await db.requests.count_documents({"_id": {"$in": expired}}):
        before = await objects_and_documents(db, settings)
        await retention.run_once()
        passes += 1
        spent = before - await objects_and_documents(db, settings)
        assert 0 < spent <= 25 + 4, f"pass {passes} deleted {spent}"  # a request's last 4 deletes may overrun
        assert passes < 20
    assert passes >= (3 * (26 + 14)) // (25 + 4)
    minio = minio_client(settings)
    for request_id in expired:
        assert await traces(db, request_id) == {name: 0 for name in COLLECTIONS[:5]}
        assert stored_objects(minio, settings.s3_bucket, request_id) == []
    assert (await traces(db, kept))["products"] == 2
    assert len(stored_objects(minio, settings.s3_bucket, kept)) == 4


async def objects_and_documents(db: Database, settings: Settings) -> int:
    documents = sum([await db.db[name].count_documents({}) for name in COLLECTIONS])
    return documents + len(list(minio_client(settings).list_objects(settings.s3_bucket, recursive=True)))


async def test_the_first_pass_tags_requests_from_before_finished_hour_and_deletes_the_expired(scratch):
    db, storage, _settings = scratch
    legacy_old, legacy_new = str(uuid.uuid4()), str(uuid.uuid4())
    for request_id, age in ((legacy_old, 45), (legacy_new, 3)):
        await write_request(db, storage, request_id, status="Completed", finished=None, images=1)
        # what a request finished by an older aggregator looks like: finished_at, no finished_hour
        await db.requests.update_one({"_id": request_id}, {"$set": {"finished_at": utcnow() - timedelta(days=age)}})
    await Retention(db, storage, days=30).run_once()
    assert await db.requests.count_documents({"_id": legacy_old}) == 0
    kept = await db.requests.find_one({"_id": legacy_new})
    assert kept is not None and kept["finished_hour"]
    cursor = await db.retention_state.find_one({"_id": "cursor"})
    assert cursor is not None and cursor["done_through"] < kept["finished_hour"]


async def test_products_are_paged_by_row_key(stack: str, http: aiohttp.ClientSession, image_host: ImageHost):
    jpeg = image_host.add("page.jpg", encode(photo("coffee.png"), "JPEG", quality=90))
    rows = [(f"P{row}", f"Product {row}", [jpeg] * (1 + row % 2)) for row in range(1, 8)]
    request_id = (await (await upload(http, csv_text(rows))).json())["request_id"]
    assert (await wait_final(http, request_id))["status"] == "Completed"

    async def page(path: str) -> dict:
        async with http.get(f"{API}{path}") as answer:
            assert answer.status == 200, await answer.text()
            return await answer.json()

    pages: list[dict] = []
    path: str | None = f"/requests/{request_id}/products?limit=3"
    while path:
        pages.append(await page(path))
        path = pages[-1].get("next")
    assert [[item["row"] for item in body["items"]] for body in pages] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [body["offset"] for body in pages] == [0, 3, 6] and all(body["total"] == 7 for body in pages)
    whole = await page(f"/requests/{request_id}/products?limit=500")
    assert [item for body in pages for item in body["items"]] == whole["items"]
    for item, (serial, _name, urls) in zip(whole["items"], rows, strict=True):
        assert item["serial_number"] == serial and item["pending"] == 0
        assert len(item["output_image_urls"]) == len(urls) and all(item["output_image_urls"])
    middle = await page(f"/requests/{request_id}/products?offset=5&limit=1")
    assert [item["row"] for item in middle["items"]] == [6] and middle["next"].endswith("offset=6&limit=1")
    beyond = await page(f"/requests/{request_id}/products?offset=7")
    assert beyond["items"] == [] and "next" not in beyond
