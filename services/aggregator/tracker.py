"""Records each image result exactly once and notices when a request is complete.

Each result is inserted into ``results`` under the deterministic id ``<request>:<row>:<index>``: the unique
``_id`` makes a redelivered result a duplicate-key error that changes nothing, and an insert is never lost to a
concurrent update (FerretDB 1.x does not isolate read-modify-write updates of one document). Counters in
``progress`` (one small document per open request, written by the aggregator alone) give cheap progress and a
cheap "maybe complete" signal; the final word is an exact count of the request's results, which reads every one
of them, so it runs only when the counters say done, when a duplicate shows up (its counter increment may have
been lost in a crash) or from the sweeper when a request goes quiet.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime

import structlog
from aio_pika.abc import AbstractIncomingMessage
from pymongo import ReplaceOne, ReturnDocument

from services.aggregator.finisher import Finisher
from shared import metrics
from shared.batcher import Batcher
from shared.cache import CacheKind
from shared.database import Database, failed_bucket, insert_new, result_id
from shared.lifecycle import progress_of
from shared.messages import ImageResult, ImageResults, SourceRecord
from shared.timeutil import hour_key, utcnow

log = structlog.get_logger()


def result_document(result: ImageResult) -> dict:
    document = {
        "_id": result_id(result.request_id, result.row, result.index),
        "request_id": result.request_id,
        "row": result.row,
        "index": result.index,
        "ok": result.ok,
        "output_url": result.output_url if result.ok else None,
        "error": None if result.ok else (result.error or "failed"),
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "codec": result.codec,
        "format_in": result.format_in,
        "format_out": result.format_out,
        "cached": result.cached,
        "cache": result.cache,
        "cache_object": result.cache_object if result.ok else None,
        "at": utcnow(),
    }
    if not result.ok:
        document["failed_bucket"] = failed_bucket(result.request_id, result.row)
    return document


def url_record(source: SourceRecord, now: datetime) -> dict:
    """The remembered state of one URL, written whole: on FerretDB a lost race between two writers leaves one of
    two consistent records (validators always with the bytes and output they described), never a mix."""
    return {
        "_id": source.url_id,
        "sha256": source.sha256,
        "size": source.size,
        "etag": source.etag,
        "last_modified": source.last_modified,
        "object_key": source.object_key,
        "stored_hour": hour_key(now),  # retention deletes records by the hour they were stored
    }


class ResultTracker:
    def __init__(self, db: Database, finisher: Finisher, batch_size: int = 200, batch_delay: float = 0.05) -> None:
        self.db = db
        self.finisher = finisher
        self.batcher: Batcher[ImageResult] = Batcher(self._flush, batch_size, batch_delay)

    async def handle(self, result: ImageResult, _message: AbstractIncomingMessage) -> None:
        structlog.contextvars.bind_contextvars(row=result.row, index=result.index)
        await self.batcher.submit(result)

    async def handle_batch(self, batch: ImageResults, _message: AbstractIncomingMessage) -> None:
        """Several results in one message (``image.done.batch``): acked once every one of them is recorded. They
        join the same database batches as single results; a failed flush fails the message, and its redelivery
        inserts again only what is missing (duplicate keys are ignored, and counted nowhere)."""
        structlog.contextvars.bind_contextvars(results=len(batch.results))
        await asyncio.gather(*(self.batcher.submit(result) for result in batch.results))

    async def _flush(self, results: list[ImageResult]) -> None:
        """Runs in a task of its own whose log context is a copy of one submitter's (its request, row and
        index), so each request's lines are bound to that request here, and to no one image."""
        by_request: dict[str, list[ImageResult]] = defaultdict(list)
        for result in results:
            by_request[result.request_id].append(result)
        structlog.contextvars.unbind_contextvars("row", "index")
        for request_id, batch in by_request.items():
            structlog.contextvars.bind_contextvars(request_id=request_id)
            async with self.finisher.locks.hold(request_id):
                await self._record(request_id, batch)

    async def _record(self, request_id: str, batch: list[ImageResult]) -> None:
        duplicates = await insert_new(self.db.results, [result_document(r) for r in batch])
        fresh = [r for i, r in enumerate(batch) if i not in duplicates]
        metrics.results_recorded(ok=sum(r.ok for r in fresh), failed=sum(not r.ok for r in fresh))
        if duplicates:
            log.info("result_duplicates", request_id=request_id, count=len(duplicates))
        await self._remember_sources(batch)
        total = await self._images_total(request_id)
        if fresh:
            progress = await self.db.progress.find_one_and_update(
                {"_id": request_id},
                {
                    "$inc": {
                        "images_done": sum(r.ok for r in fresh),
                        "images_failed": sum(not r.ok for r in fresh),
                        "bytes_in": sum(r.bytes_in for r in fresh),
                        "bytes_out": sum(r.bytes_out for r in fresh),
                        "images_cached": sum(r.ok and r.cached for r in fresh),
                        "images_revalidated": sum(r.ok and r.cache == CacheKind.REVALIDATED for r in fresh),
                    },
                    "$set": {"updated_at": utcnow()},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,  # no projection: FerretDB 1.x findAndModify rejects "fields"
            )
            assert progress is not None  # an upsert returning the document AFTER always has one
            if total is not None and progress_of(progress).images_settled >= total:
                await self.finisher.finish_if_complete_locked(request_id, counted_complete=True)
                return
        if duplicates and total is not None:
            await self.finisher.finish_if_complete_locked(request_id)

    async def _remember_sources(self, batch: list[ImageResult]) -> None:
        """Record what downloads found per URL (validators, hash, output), so the next request that names the URL
        can revalidate it. Duplicates too: the record write may be what failed before the redelivery."""
        records = {r.source.url_id: r.source for r in batch if r.ok and r.source is not None and r.source.url_id}
        if not records:
            return
        now = utcnow()
        await self.db.url_validators.bulk_write(
            [ReplaceOne({"_id": url_id}, url_record(source, now), upsert=True) for url_id, source in records.items()],
            ordered=False,
        )

    async def _images_total(self, request_id: str) -> int | None:
        """The request's image count once its fan-out is complete, else None (still growing): one ``_id`` lookup
        per batch and request (~1 ms), so nothing is cached."""
        request = await self.db.requests.find_one(
            {"_id": request_id}, projection={"fanout_complete": 1, "images_total": 1}
        )
        if request is None or not request.get("fanout_complete"):
            return None
        return request.get("images_total", 0)
