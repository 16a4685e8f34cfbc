"""Puts each image result in its product's slot exactly once and notices when a request is complete.

A slot is written with a conditional update (``settled.<i>`` must still be false), so a redelivered result
changes nothing. Counters in ``progress`` give cheap progress and a cheap "maybe complete" signal; the final
word comes from an indexed probe for any product still pending, which runs only when the counters say done,
when a duplicate shows up (its counter increment may have been lost in a crash) or from the sweeper.
All writes for one request are serialised (see :mod:`shared.locks`).
"""

from __future__ import annotations

import structlog
from aio_pika.abc import AbstractIncomingMessage
from pymongo import ReturnDocument

from services.aggregator.finisher import Finisher
from shared.database import Database
from shared.messages import ImageResult
from shared.timeutil import utcnow

log = structlog.get_logger()


class ResultTracker:
    def __init__(self, db: Database, finisher: Finisher) -> None:
        self.db = db
        self.finisher = finisher
        self._totals: dict[str, int] = {}  # images_total of requests whose fan-out is complete (immutable)

    async def handle(self, result: ImageResult, _message: AbstractIncomingMessage) -> None:
        async with self.finisher.locks.hold(result.request_id):
            await self._record(result)

    async def _record(self, result: ImageResult) -> None:
        i = result.index
        now = utcnow()
        updated = await self.db.products.update_one(
            {"_id": result.product_id, f"settled.{i}": False},
            {
                "$set": {
                    f"settled.{i}": True,
                    f"output_image_urls.{i}": result.output_url if result.ok else None,
                    f"image_errors.{i}": None if result.ok else (result.error or "failed"),
                    "updated_at": now,
                },
                "$inc": {"pending": -1},
            },
        )
        if updated.modified_count == 0:
            log.info("result_duplicate", row=result.row, index=i)
            await self.finisher.finish_if_complete_locked(result.request_id)
            return
        counter = "images_done" if result.ok else "images_failed"
        progress = await self.db.progress.find_one_and_update(
            {"_id": result.request_id},
            {
                "$inc": {counter: 1, "bytes_in": result.bytes_in, "bytes_out": result.bytes_out},
                "$set": {"updated_at": now},
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,  # no projection: FerretDB 1.x findAndModify rejects "fields"
        )
        total = await self._images_total(result.request_id)
        settled = progress.get("images_done", 0) + progress.get("images_failed", 0)
        if total is not None and settled >= total:
            await self.finisher.finish_if_complete_locked(result.request_id)

    async def _images_total(self, request_id: str) -> int | None:
        """The request's image count once its fan-out is complete, else None (still growing)."""
        if request_id in self._totals:
            return self._totals[request_id]
        request = await self.db.requests.find_one(
            {"_id": request_id}, projection={"fanout_complete": 1, "images_total": 1}
        )
        if request is None or not request.get("fanout_complete"):
            return None
        if len(self._totals) > 10_000:
            self._totals.clear()
        self._totals[request_id] = request.get("images_total", 0)
        return self._totals[request_id]
