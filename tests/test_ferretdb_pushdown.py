"""Our FerretDB patch (scripts/ferretdb/pixpress.patch): every query pixpress makes is served by an index.

Stock FerretDB 1.24 reads and decodes the whole collection for every query (even ``{_id: ...}``: its ``_id``
expression is not the one its index is built on), so each finished request made every later one slower. FerretDB's
``explain`` returns SQLite's ``EXPLAIN QUERY PLAN``: ``SEARCH <table> USING INDEX <table>_<index> ...`` is an index
lookup, ``SCAN <table>`` reads every row. These tests run ``explain`` for the query shapes the services use on a
scratch database that the services' own ``Database.connect()`` indexed, and check that pushed-down filters still
answer exactly as MongoDB does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from services.aggregator.retention import Retention, cutoff_hour_filter, expired_hours_filter
from services.aggregator.sweeper import OPEN_REQUESTS, OUTBOX_PENDING
from services.ingest.api import build_app
from services.ingest.backfill import index_existing_requests
from services.ingest.upload import UploadHandler
from shared import request_hours
from shared.broker import Broker
from shared.cache import shared_object_key, url_record_id
from shared.database import FAILED_BUCKET_ROWS, Database, failed_bucket, product_id, result_id
from shared.settings import Settings
from shared.storage import Storage
from shared.timeutil import hour_key, hour_keys, utcnow
from tests.support.staged import request_document

REQUEST = str(uuid.uuid4())
NOW = utcnow()
SHARED = shared_object_key("a" * 64, "jpg")

# what the services ask: (label, collection, filter, the index that must serve it or None for "any index")
QUERIES: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("request by id", "requests", {"_id": REQUEST}, "_id_"),  # status API, fan-out, tracker, finisher, notifier
    ("progress by id", "progress", {"_id": REQUEST}, "_id_"),
    ("webhook record by id", "webhooks", {"_id": REQUEST}, "_id_"),
    ("idempotency key", "idempotency_keys", {"_id": "client-key-1"}, "_id_"),
    ("final-status write", "requests", {"_id": REQUEST, "status": {"$in": ["Queued", "Processing"]}}, None),
    ("products page", "products", {"_id": {"$in": [product_id(REQUEST, row) for row in range(1, 101)]}}, "_id_"),
    ("products page results", "results", {"_id": {"$in": [result_id(REQUEST, r, 0) for r in range(1, 101)]}}, "_id_"),
    ("results of a request", "results", {"request_id": REQUEST}, "request_row_index"),  # output CSV, sweeper
    ("products of a request", "products", {"request_id": REQUEST}, "request_row"),  # output CSV, sweeper, retention
    (  # the products page's failed filter: one window of row buckets (services/ingest/product_pages.py)
        "failed rows of a request",
        "results",
        {"failed_bucket": {"$in": [failed_bucket(REQUEST, 1 + FAILED_BUCKET_ROWS * b) for b in range(64)]}},
        "failed_bucket",
    ),
    ("pending outbox", "requests", OUTBOX_PENDING, "outbox_pending"),  # sweeper
    ("open requests", "requests", OPEN_REQUESTS, "status_updated"),  # sweeper
    ("finished requests", "requests", {"status": "Completed"}, "status_updated"),  # retention's first pass
    (
        "expired hours",
        "requests",
        expired_hours_filter(hour_keys(hour_key(NOW - timedelta(days=40)), hour_key(NOW))),
        "finished_hour",
    ),
    ("cutoff hour", "requests", cutoff_hour_filter(NOW), "finished_hour"),
    # the output cache (docs/cache.md): the fan-out's URL records, retention's reference check and expired records
    ("URL records of a batch", "url_validators", {"_id": {"$in": [url_record_id(f"{i}") for i in range(500)]}}, "_id_"),
    ("results pointing to a shared object", "results", {"cache_object": SHARED}, "cache_object"),
    (
        "URL records stored in expired hours",
        "url_validators",
        {"stored_hour": {"$in": hour_keys(hour_key(NOW - timedelta(days=40)), hour_key(NOW))}},
        "stored_hour",
    ),
]


@pytest.fixture
async def database() -> AsyncIterator[Any]:
    """A scratch database with pixpress's collections and indexes, made by the services' own ``connect()``."""
    settings = Settings(mongo_db=f"pixpress_test_pushdown_{uuid.uuid4().hex[:8]}")
    db = Database(settings)
    info = await db.client.admin.command("buildInfo")
    if "ferretdbVersion" not in info:
        await db.close()
        pytest.skip("the plans checked here are FerretDB's (SQLite) plans; MongoDB explains differently")
    await db.connect()
    for name in ("progress", "webhooks", "idempotency_keys", "retention_state", "cache_candidates"):  # by first use
        await db.db.create_collection(name)
    try:
        yield db.db
    finally:
        await db.client.drop_database(settings.mongo_db)
        await db.close()


def plan_of(explain: dict[str, Any]) -> list[str]:
    return [line.split("detail=", 1)[-1] for line in explain["queryPlanner"]["Plan"]]


def assert_indexed(plan: list[str], index: str | None) -> None:
    scans = [step for step in plan if step.startswith("SCAN ")]
    assert not scans, f"the query reads the whole table: {plan}"
    used = [step.split("USING INDEX ", 1)[1].split(" ", 1)[0] for step in plan if "USING INDEX " in step]
    assert used, f"no index in the plan: {plan}"
    if index is not None:
        assert all(name.endswith(f"_{index}") for name in used), f"expected index {index}: {plan}"


@pytest.mark.parametrize(("label", "collection", "query", "index"), QUERIES, ids=[query[0] for query in QUERIES])
async def test_the_services_queries_use_an_index(
    stack: str, database: Any, label: str, collection: str, query: dict, index: str | None
):
    explain = await database.command("explain", {"find": collection, "filter": query})
    assert explain["filterPushdown"] is True
    assert_indexed(plan_of(explain), index)


async def test_counting_a_requests_results_uses_the_index(stack: str, database: Any):
    """``count_documents`` is an aggregation (``$match`` then ``$group``); FerretDB pushes the ``$match`` down."""
    pipeline = [{"$match": {"request_id": REQUEST}}, {"$group": {"_id": 1, "n": {"$sum": 1}}}]
    explain = await database.command("explain", {"aggregate": "results", "pipeline": pipeline, "cursor": {}})
    assert explain["filterPushdown"] is True
    assert_indexed(plan_of(explain), "request_row_index")


async def test_filters_it_cannot_push_down_still_scan(stack: str, database: Any):
    """The check above can fail: a number is not pushed down, and its plan says so."""
    explain = await database.command("explain", {"find": "results", "filter": {"row": 5}})
    assert explain["filterPushdown"] is False
    assert any(step.startswith("SCAN ") for step in plan_of(explain))


async def test_pushed_down_filters_answer_like_mongodb(stack: str, database: Any):
    """The pushdown selects a superset (arrays, ObjectID vs string) that FerretDB then filters exactly: the
    answers must be MongoDB's, whatever the index returned."""
    oid = ObjectId()
    items = database["items"]
    await items.create_index([("tags", 1)])
    await items.create_index([("s", 1), ("flag", 1)])
    await items.insert_many(
        [
            {"_id": 1, "tags": ["a", "b"], "s": "a", "flag": True, "o": oid},
            {"_id": 2, "tags": "a", "s": "<&>", "flag": False, "o": str(oid)},
            {"_id": 3, "tags": ["z", "a"], "s": "é", "flag": [True], "o": [oid]},
            {"_id": 4, "tags": "q", "s": 'a"b'},
            {"_id": "k1", "s": "b"},
            {"_id": "k2", "s": "c"},
        ]
    )
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        ({"tags": "a"}, [1, 2, 3]),
        ({"tags": ["a", "b"]}, [1]),
        ({"tags": {"$in": ["b", "q"]}}, [1, 4]),
        ({"tags": {"$in": [None]}}, ["k1", "k2"]),
        ({"s": "<&>"}, [2]),
        ({"s": "é"}, [3]),
        ({"s": 'a"b'}, [4]),
        ({"s": {"$in": ["é", "b"]}}, [3, "k1"]),
        ({"flag": True}, [1, 3]),
        ({"flag": False}, [2]),
        ({"flag": {"$in": [True, False]}}, [1, 2, 3]),
        ({"o": oid}, [1, 3]),
        ({"o": str(oid)}, [2]),
        ({"o": {"$in": [oid]}}, [1, 3]),
        ({"_id": {"$in": ["k1", "k2", "k3"]}}, ["k1", "k2"]),
        ({"_id": {"$in": ["k1", 4]}}, [4, "k1"]),
        ({"s": {"$in": ["b", "c"]}, "_id": {"$in": ["k1", 2]}}, ["k1"]),
        ({"tags": "a", "flag": True}, [1, 3]),
    ]
    for query, expected in cases:
        found = sorted([document["_id"] async for document in items.find(query)], key=str)
        assert found == sorted(expected, key=str), query
        assert await items.count_documents(query) == len(expected), query
    deleted = await items.delete_many({"_id": {"$in": ["k1", 2, "nope"]}})
    assert deleted.deleted_count == 2
    assert sorted([document["_id"] async for document in items.find({})], key=str) == [1, 3, 4, "k2"]


class Recorder(monitoring.CommandListener):
    """Every filter a client sends (find, update, delete), so a test checks the queries code really makes."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.filters: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name != self.database:
            return
        command = event.command
        if event.command_name == "find":
            self.filters.append((command["find"], dict(command.get("filter", {}))))
        elif event.command_name == "update":
            self.filters += [(command["update"], dict(update["q"])) for update in command.get("updates", [])]
        elif event.command_name == "delete":
            self.filters += [(command["delete"], dict(delete["q"])) for delete in command.get("deletes", [])]

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_every_query_of_the_request_list_its_backfill_and_its_retention_uses_an_index(stack: str):
    """``GET /requests`` paged to the end through hours months apart and requests from before ``created_hour``,
    the backfill that indexes those, and retention forgetting emptied hours: each filter they sent, explained."""
    settings = Settings(mongo_db=f"pixpress_test_list_pushdown_{uuid.uuid4().hex[:8]}")
    recorder = Recorder(settings.mongo_db)
    db = Database(settings)
    db.client = AsyncMongoClient(settings.mongo_url.get_secret_value(), tz_aware=True, event_listeners=[recorder])
    db.db = db.client[settings.mongo_db]
    if "ferretdbVersion" not in await db.client.admin.command("buildInfo"):
        await db.close()
        pytest.skip("the plans checked here are FerretDB's (SQLite) plans; MongoDB explains differently")
    await db.connect()
    try:
        for hours_ago in (24 * 60, 5):  # requests an ingest from before created_hour made
            document = request_document(str(uuid.uuid4()), products=1, images=1)
            del document["created_hour"]
            document["created_at"] = utcnow() - timedelta(hours=hours_ago)
            await db.requests.insert_one(document)
        await index_existing_requests(db)
        for hours_ago in (24 * 40, 30, 2, 0):
            document = request_document(str(uuid.uuid4()), products=1, images=1)
            created = utcnow() - timedelta(hours=hours_ago)
            document.update(created_at=created, created_hour=hour_key(created))
            await request_hours.record_hour(db, document["created_hour"])
            await db.requests.insert_one(document)
            await db.progress.insert_one({"_id": document["_id"], "images_done": 0, "updated_at": created})
        await request_hours.record_hour(db, hour_key(utcnow() - timedelta(days=45)))  # emptied: retention's

        upload = UploadHandler(settings, db, Storage(settings), Broker(settings.amqp_url.get_secret_value()))
        app = build_app(settings, db, upload, check=lambda: asyncio.sleep(0, {}))
        listed: list[str] = []
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            path: str | None = "/requests?limit=2"
            while path:
                answer = await client.get(path)
                assert answer.status == 200, await answer.text()
                body = await answer.json()
                listed += [item["request_id"] for item in body["items"]]
                path = body.get("next")
        assert len(listed) == 6
        await Retention(db, Storage(settings), days=30).run_once()
        assert await db.request_hours.count_documents({"_id": hour_key(utcnow() - timedelta(days=45))}) == 0

        filters = recorder.filters
        kinds = {(collection, tuple(sorted(query))) for collection, query in filters}
        for expected in [
            ("request_hours", ("_id",)),  # the walk through the hours
            ("requests", ("created_hour",)),  # the requests of an hour
            ("requests", ("_id",)),  # the ids of requests from before created_hour
            ("progress", ("_id",)),  # live counts of a page's open requests
            ("request_hours_state", ("_id",)),
            ("requests", ("status",)),  # the backfill
        ]:
            assert expected in kinds, f"no {expected} query was made: {sorted(kinds)}"
        for collection, query in filters:
            if not query:
                # retention takes the output cache's candidates a few at a time from the head of their list: an
                # unfiltered read is that list's whole point, and no other collection may be read that way
                assert collection == "cache_candidates", collection
                continue
            explain = await db.db.command("explain", {"find": collection, "filter": query})
            assert explain["filterPushdown"] is True, (collection, query)
            assert_indexed(plan_of(explain), None)
    finally:
        await db.client.drop_database(settings.mongo_db)
        await db.close()
