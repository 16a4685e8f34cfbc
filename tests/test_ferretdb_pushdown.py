"""Our FerretDB patch (scripts/ferretdb/pixpress.patch): every query pixpress makes is served by an index.

Stock FerretDB 1.24 reads and decodes the whole collection for every query (even ``{_id: ...}``: its ``_id``
expression is not the one its index is built on), so each finished request made every later one slower. FerretDB's
``explain`` returns SQLite's ``EXPLAIN QUERY PLAN``: ``SEARCH <table> USING INDEX <table>_<index> ...`` is an index
lookup, ``SCAN <table>`` reads every row. These tests run ``explain`` for the query shapes the services use on a
scratch database that the services' own ``Database.connect()`` indexed, and check that pushed-down filters still
answer exactly as MongoDB does.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId

from services.aggregator.retention import cutoff_hour_filter, expired_hours_filter
from services.aggregator.sweeper import OPEN_REQUESTS, OUTBOX_PENDING
from shared.cache import shared_object_key, url_record_id
from shared.database import Database, product_id, result_id
from shared.settings import Settings
from shared.timeutil import hour_key, hour_keys, utcnow

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
