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
from pymongo.errors import BulkWriteError

from services.ingest.csv_parser import CsvReader, Limits, ProductRow, RowProblem
from services.ingest.records import product_document, utcnow
from shared import metrics
from shared.broker import Broker
from shared.database import Database, finished_fields, product_id
from shared.messages import ImageTask, Progress, RequestAccepted, RequestFinished, RequestStatus, RoutingKey
from shared.storage import Storage

log = structlog.get_logger()
_DUPLICATE_KEY = 11000


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
    def __init__(self, db: Database, storage: Storage, broker: Broker, limits: Limits, batch_size: int) -> None:
        self.db = db
        self.storage = storage
        self.broker = broker
        self.limits = limits
        self.batch_size = batch_size

    async def handle(self, event: RequestAccepted, _message: AbstractIncomingMessage) -> None:
        request = await self.db.requests.find_one({"_id": event.request_id})
        if request is None:
            log.warning("fanout_unknown_request")
            return
        if request["status"] not in (RequestStatus.QUEUED.value, RequestStatus.PROCESSING.value):
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
        try:
            await self.db.products.insert_many([product_document(request_id, row) for row in fresh], ordered=False)
        except BulkWriteError as exc:
            if any(error.get("code") != _DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
                raise

    async def _publish(self, request_id: str, batch: list[ProductRow], cursor: int) -> None:
        fresh = [row for row in batch if row.row > cursor]
        if not fresh:
            return
        last_row = fresh[-1].row
        tasks = (
            ImageTask(
                request_id=request_id, product_id=product_id(request_id, row.row), row=row.row, index=index, url=url
            )
            for row in fresh
            for index, url in enumerate(row.urls)
        )
        await self.broker.publish_many(RoutingKey.IMAGE_TODO, tasks)
        await self.db.requests.update_one(
            {"_id": request_id, "fanout_cursor": {"$lt": last_row}},
            {"$set": {"fanout_cursor": last_row, "updated_at": utcnow()}},
        )

    async def _fail(self, request: dict[str, Any], reason: str) -> None:
        """The CSV is unusable: the request ends Failed, once, and the notifier hears about it."""
        now = utcnow()
        result = await self.db.requests.update_one(
            {"_id": request["_id"], "status": {"$in": [RequestStatus.QUEUED.value, RequestStatus.PROCESSING.value]}},
            {
                "$set": {
                    "status": RequestStatus.FAILED.value,
                    "error": reason,
                    "updated_at": now,
                    **finished_fields(now),
                    "outbox_pending": True,
                }
            },
        )
        log.error("fanout_failed", reason=reason)
        if result.modified_count:
            metrics.request_finished(RequestStatus.FAILED.value, request["created_at"], now)
            await self.broker.publish(
                RoutingKey.REQUEST_FINISHED,
                RequestFinished(
                    request_id=request["_id"],
                    status=RequestStatus.FAILED,
                    error=reason,
                    progress=Progress(),
                    finished_at=now,
                ),
                message_id=request["_id"],
            )
            await self.db.requests.update_one({"_id": request["_id"]}, {"$set": {"outbox_pending": False}})
