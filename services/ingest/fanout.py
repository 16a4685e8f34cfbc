"""Turns an accepted request into product records and one image task per URL, off the request path.

Batches are written with ``insert_many(ordered=False)`` (a redelivery's duplicates are ignored) and published
with pipelined confirms; ``fanout_cursor`` remembers the last finished batch, so a fan-out interrupted by a
crash resumes where it stopped instead of starting over. ``fanout_complete`` and the final totals are set
*before* the last batch is published, so the aggregator always sees them when the last result arrives.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from services.ingest.csv_parser import CsvReader, Limits, ProductRow, RowProblem
from services.ingest.records import product_document
from shared.broker import Broker
from shared.cache import url_record_id
from shared.database import Database, find_by_ids, insert_new, product_id
from shared.lifecycle import end_request, is_open, publish_outbox
from shared.messages import ImageBatch, ImageTask, RequestAccepted, RequestStatus, RoutingKey, SourceRecord
from shared.storage import Storage
from shared.timeutil import utcnow

log = structlog.get_logger()
REVISITS_PER_BATCH = 50


class CsvUnprocessable(Exception):
    """The stored CSV cannot be read any more (it passed validation, so this means corruption or tampering)."""


def _batches(reader: CsvReader, size: int) -> Iterator[list[ProductRow]]:
    batch: list[ProductRow] = []
    for item in reader:
        if isinstance(item, RowProblem):
            raise CsvUnprocessable(f"row {item.row}: {item.message}")
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class FanOut:
    def __init__(
        self, db: Database, storage: Storage, broker: Broker, limits: Limits, batch_size: int, cache: bool = True
    ) -> None:
        self.db = db
        self.storage = storage
        self.broker = broker
        self.limits = limits
        self.batch_size = batch_size
        self.cache = cache  # PIXPRESS_CACHE: attach what is known of each URL to its task

    async def handle(self, event: RequestAccepted, _message: AbstractIncomingMessage) -> None:
        request = await self.db.requests.find_one({"_id": event.request_id})
        if request is None:
            log.warning("fanout_unknown_request")
            return
        if not is_open(request["status"]):
            log.info("fanout_skipped_final", status=request["status"])
            return
        await self.db.requests.update_one(
            {"_id": event.request_id, "status": RequestStatus.QUEUED.value},
            {"$set": {"status": RequestStatus.PROCESSING.value, "updated_at": utcnow()}},
        )
        fd, path = tempfile.mkstemp(prefix="pixpress-fanout-", suffix=".csv")
        os.close(fd)
        try:
            await self.storage.download_to_file(request["csv_key"], path)
            await self._fan_out(request, path)
        except (CsvUnprocessable, UnicodeDecodeError) as exc:
            await self._fail(request, f"the CSV could not be processed: {exc}")
        finally:
            os.unlink(path)

    async def _fan_out(self, request: dict[str, Any], path: str) -> None:
        request_id = request["_id"]
        cursor = int(request.get("fanout_cursor", 0))
        products = images = 0
        # a local temp file read a batch at a time between awaits: each read is short, so no thread hop
        with open(path, encoding="utf-8-sig", newline="") as stream:  # noqa: ASYNC230
            reader = CsvReader(stream, self.limits)
            pending: list[ProductRow] | None = None
            # batch k's tasks are confirmed by RabbitMQ while batch k+1's products go into the database:
            # the two servers work side by side instead of taking turns
            publishing: asyncio.Task[None] | None = None
            try:
                for batch in _batches(reader, self.batch_size):
                    products += len(batch)
                    images += sum(len(row.urls) for row in batch)
                    if pending is not None:
                        await self._store(request_id, pending, cursor)
                        if publishing is not None:
                            await publishing
                        publishing = asyncio.create_task(self._publish(request_id, pending, cursor))
                    pending = batch
                if pending is None:
                    raise CsvUnprocessable("no data rows")
                # every product exists before the request says the fan-out is complete, and that is said
                # before the last tasks go out: a completion check never sees a half-stored request as finished.
                await self._store(request_id, pending, cursor)
                if publishing is not None:
                    await publishing
                    publishing = None
            finally:
                if publishing is not None and not publishing.done():
                    publishing.cancel()
                    await asyncio.gather(publishing, return_exceptions=True)
            await self.db.requests.update_one(
                {"_id": request_id},
                {
                    "$set": {
                        "fanout_complete": True,
                        "products_total": products,
                        "images_total": images,
                        "updated_at": utcnow(),
                    }
                },
            )
            await self._publish(request_id, pending, cursor)
        log.info("fanout_done", products=products, images=images, resumed_from=cursor)

    async def _store(self, request_id: str, batch: list[ProductRow], cursor: int) -> None:
        fresh = [row for row in batch if row.row > cursor]
        if not fresh:
            return  # stored and published before a crash
        await insert_new(self.db.products, [product_document(request_id, row) for row in fresh])

    async def _publish(self, request_id: str, batch: list[ProductRow], cursor: int) -> None:
        fresh = [row for row in batch if row.row > cursor]
        if not fresh:
            return
        last_row = fresh[-1].row
        known = await self._known_sources({url for row in fresh for url in row.urls})
        tasks = [
            ImageTask(
                request_id=request_id,
                product_id=product_id(request_id, row.row),
                row=row.row,
                index=index,
                url=url,
                known=known.get(url),
            )
            for row in fresh
            for index, url in enumerate(row.urls)
        ]
        # URLs downloaded before go out in batches (compressor.images.batch): revalidating one costs about as much
        # as the delivery, ack and confirmed publish a message of its own would add
        revisits = [task for task in tasks if task.known is not None]
        size = REVISITS_PER_BATCH
        batches = (ImageBatch(tasks=revisits[i : i + size]) for i in range(0, len(revisits), size))
        await self.broker.publish_many(RoutingKey.IMAGE_BATCH, batches)
        await self.broker.publish_many(RoutingKey.IMAGE_TODO, (task for task in tasks if task.known is None))
        await self.db.requests.update_one(
            {"_id": request_id, "fanout_cursor": {"$lt": last_row}},
            {"$set": {"fanout_cursor": last_row, "updated_at": utcnow()}},
        )

    async def _known_sources(self, urls: set[str]) -> dict[str, SourceRecord]:
        """What earlier downloads left in ``url_validators`` for these URLs, looked up by ``_id`` a thousand at a
        time: the compressors then revalidate instead of downloading (docs/cache.md)."""
        if not self.cache or not urls:
            return {}
        by_id = {url_record_id(url): url for url in urls}
        known: dict[str, SourceRecord] = {}
        for record in await find_by_ids(self.db.url_validators, list(by_id)):
            try:  # the record's own fields (_id, stored_hour) are ignored, like any field a message does not know
                known[by_id[record["_id"]]] = SourceRecord.model_validate(record)
            except ValidationError:  # a record this version cannot use: the URL is downloaded whole
                log.warning("url_record_unusable", url_id=record.get("_id"))
        return known

    async def _fail(self, request: dict[str, Any], reason: str) -> None:
        """The CSV is unusable: the request ends Failed, once, and the notifier hears about it."""
        ended = await end_request(self.db, request, RequestStatus.FAILED, error=reason)
        log.error("fanout_failed", reason=reason)
        if ended:
            await publish_outbox(self.db, self.broker, request["_id"])
