"""MongoDB access through pymongo's asyncio client (``AsyncMongoClient``; Motor is deprecated).

Only features FerretDB 1.x implements are used: single-document atomic updates with ``$set``/``$inc`` and
dotted array positions, ``find`` with sort/skip/limit, ``insert_many(ordered=False)`` and ``count_documents``.
No transactions, change streams or ``$lookup``: FerretDB 1.x has none of them.

FerretDB 1.x also does not isolate concurrent updates of one document (read-modify-write, last writer wins),
so every document has one owning service at a time: ``requests`` belongs to ingest until the fan-out is
complete and to the aggregator afterwards, ``products`` are written once by the fan-out, ``results`` and
``progress`` belong to the aggregator, ``webhooks`` to the notifier. And it uses no index for queries (not
even ``_id``): per-message work therefore only inserts into large collections or touches small ones.
Within a service, writes for one request go through :class:`shared.locks.KeyedLocks`.
"""

from __future__ import annotations

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.settings import Settings


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
        # products and results are read in row order per request (product pages, output CSV); results are
        # counted per request when it may be complete. FerretDB 1.x accepts the indexes but scans anyway.
        await self.products.create_index([("request_id", ASCENDING), ("row", ASCENDING)], name="request_row")
        await self.results.create_index(
            [("request_id", ASCENDING), ("row", ASCENDING), ("index", ASCENDING)], name="request_row_index"
        )
        await self.requests.create_index([("status", ASCENDING), ("updated_at", ASCENDING)], name="status_updated")

    async def healthy(self) -> bool:
        try:
            await self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def close(self) -> None:
        await self.client.close()
