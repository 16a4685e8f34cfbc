"""MongoDB access through pymongo's asyncio client (``AsyncMongoClient``; Motor is deprecated).

Only features FerretDB 1.x implements are used: single-document atomic updates with ``$set``/``$inc`` and
dotted array positions, ``find`` with sort/limit, ``insert_many(ordered=False)``, ``delete_many`` and
``count_documents``. No transactions, change streams or ``$lookup``: FerretDB 1.x has none of them.

FerretDB 1.x does not isolate concurrent updates of one document (read-modify-write, last writer wins),
so every document has one owning service at a time: ``requests`` belongs to ingest until the fan-out is
complete and to the aggregator afterwards, ``products`` are written once by the fan-out, ``results`` and
``progress`` belong to the aggregator, ``webhooks`` to the notifier. Within a service, writes for one request
go through :class:`shared.locks.KeyedLocks`.

Every query starts with what an index serves on both MongoDB and our patched FerretDB (scripts/ferretdb/,
docs/ferretdb.md): ``_id``, or a top-level equality or ``$in`` on a string or boolean field that leads an index
below. FerretDB evaluates the rest of a filter, and any sort, in Go over the documents the index selected, so
no query's cost depends on the size of the database, only on what it selects.
"""

from __future__ import annotations

from datetime import datetime

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.settings import Settings
from shared.timeutil import hour_key

# ids per ``$in``: our FerretDB patch pushes down lists of up to 10,000 values, SQLite takes 32,766 parameters
IDS_PER_QUERY = 1000
DUPLICATE_KEY = 11000  # the server's error code for an ``_id`` (or unique index key) that exists already


def product_id(request_id: str, row: int) -> str:
    """Deterministic, so the fan-out's redelivered inserts are duplicates and a page is read by its keys."""
    return f"{request_id}:{row}"


def result_id(request_id: str, row: int, index: int) -> str:
    """One result per image slot: a redelivered result is a duplicate key and changes nothing."""
    return f"{request_id}:{row}:{index}"


FAILED_BUCKET_ROWS = 64  # rows per failed_bucket key: see failed_bucket()


def failed_bucket(request_id: str, row: int) -> str:
    """The indexed key a *failed* result carries (successes have none): ``<request>:<(row - 1) // 64>``.

    It is how the products page's ``failed`` filter finds the rows with failures without reading the request's
    other results, on MongoDB and on our FerretDB alike (an equality / ``$in`` on a string leading an index, the
    one kind of filter FerretDB pushes down besides ``_id``; a range on ``row`` would be evaluated in Go over every
    result of the request). A page asks for the keys of a window of consecutive buckets, so its cost is what that
    window holds, not what the request or the database holds (services/ingest/product_pages.py).
    """
    return f"{request_id}:{(row - 1) // FAILED_BUCKET_ROWS}"


def finished_fields(now: datetime) -> dict[str, object]:
    """What every write that gives a request its final status also sets: ``finished_hour`` (indexed) is how
    retention finds the requests that finished in a given hour without reading the others."""
    return {"finished_at": now, "finished_hour": hour_key(now)}


async def find_by_ids(collection: AsyncCollection, ids: list[str]) -> list[dict]:
    """The documents among ``ids`` that exist, in no particular order: index lookups, never a scan."""
    found: list[dict] = []
    for start in range(0, len(ids), IDS_PER_QUERY):
        found += await collection.find({"_id": {"$in": ids[start : start + IDS_PER_QUERY]}}).to_list(None)
    return found


async def insert_new(collection: AsyncCollection, documents: list[dict]) -> set[int]:
    """Insert ``documents`` whose deterministic ``_id`` may exist already (a redelivered message wrote them), all of
    them even when some are duplicates; returns the positions of the duplicates. Any other error is raised."""
    try:
        await collection.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != DUPLICATE_KEY for error in errors):
            raise
        return {error["index"] for error in errors}
    return set()


class Database:
    def __init__(self, settings: Settings) -> None:
        self.client: AsyncMongoClient = AsyncMongoClient(
            settings.mongo_url.get_secret_value(), tz_aware=True, serverSelectionTimeoutMS=5000
        )
        self.db: AsyncDatabase = self.client[settings.mongo_db]

    @property
    def requests(self) -> AsyncCollection:
        return self.db["requests"]

    @property
    def products(self) -> AsyncCollection:
        return self.db["products"]

    @property
    def results(self) -> AsyncCollection:
        """One document per settled image, ``_id`` = ``<request>:<row>:<index>``; inserted once, never updated."""
        return self.db["results"]

    @property
    def progress(self) -> AsyncCollection:
        """Live counters per request, written only by the aggregator (one writer per document on FerretDB)."""
        return self.db["progress"]

    @property
    def webhooks(self) -> AsyncCollection:
        """Webhook delivery state and attempts per request, written only by the notifier."""
        return self.db["webhooks"]

    @property
    def idempotency_keys(self) -> AsyncCollection:
        """Keyed by the client's Idempotency-Key in ``_id``: uniqueness without a sparse index."""
        return self.db["idempotency_keys"]

    @property
    def request_hours(self) -> AsyncCollection:
        """One document per UTC hour that has requests (``_id`` = the hour key): how ``GET /requests`` finds the
        newest requests without a sort (shared/request_hours.py)."""
        return self.db["request_hours"]

    @property
    def request_hours_state(self) -> AsyncCollection:
        """One document: the oldest hour that may have requests, and when the requests from before
        ``created_hour`` were indexed."""
        return self.db["request_hours_state"]

    @property
    def url_validators(self) -> AsyncCollection:
        """Per image URL (``_id`` = ``shared.cache.url_record_id``): its origin's validators, the SHA-256 of what
        it served and where that output is (docs/cache.md). Written by the aggregator alone (whole-document
        replaces, so a lost race on FerretDB leaves an older but consistent record), read by the fan-out."""
        return self.db["url_validators"]

    @property
    def cache_candidates(self) -> AsyncCollection:
        """Shared outputs (``_id`` = object key) whose last known reference went with an expired request: retention
        checks each, and deletes the object when nothing points to it any more (services/aggregator/retention.py)."""
        return self.db["cache_candidates"]

    @property
    def retention_state(self) -> AsyncCollection:
        """One document, the retention cursor: the last hour whose finished requests are all deleted."""
        return self.db["retention_state"]

    async def connect(self, wait_seconds: float = 120.0) -> None:
        """Wait for the database, then make sure the indexes the queries rely on exist."""
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(wait_seconds),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(PyMongoError),
            reraise=True,
        ):
            with attempt:
                await self.client.admin.command("ping")
        # products and results are read per request in row order (output CSV, sweeper); results are counted per
        # request when it may be complete; the sweeper finds requests by status, by a pending outbox and (for
        # retention) by the hour they finished; the request list reads the requests created in an hour.
        # tests/test_ferretdb_pushdown.py checks each query uses these.
        await self.products.create_index([("request_id", ASCENDING), ("row", ASCENDING)], name="request_row")
        await self.results.create_index(
            [("request_id", ASCENDING), ("row", ASCENDING), ("index", ASCENDING)], name="request_row_index"
        )
        # the products page's failed filter (failed_bucket() above); successes lack the field
        await self.results.create_index([("failed_bucket", ASCENDING)], name="failed_bucket")
        await self.requests.create_index([("status", ASCENDING), ("updated_at", ASCENDING)], name="status_updated")
        await self.requests.create_index([("outbox_pending", ASCENDING)], name="outbox_pending")
        await self.requests.create_index([("finished_hour", ASCENDING)], name="finished_hour")
        await self.requests.create_index([("created_hour", ASCENDING)], name="created_hour")
        # the output cache (docs/cache.md): retention asks whether any result still points to a shared object, and
        # deletes URL records by the hour they were stored
        await self.results.create_index([("cache_object", ASCENDING)], name="cache_object")
        await self.url_validators.create_index([("stored_hour", ASCENDING)], name="stored_hour")

    async def healthy(self) -> bool:
        try:
            await self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def close(self) -> None:
        await self.client.close()
