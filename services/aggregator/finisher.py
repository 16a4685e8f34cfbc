"""Ends a request exactly once: output CSV, final status, then the completion event through an outbox flag.

Order matters for crash safety:
1. the output CSV is written to a deterministic key (a second writer overwrites it with the same content);
2. a conditional update moves the request from Processing to its final status *and* sets ``outbox_pending``
   in the same document write, so only one writer ever wins and the intent to notify is durable;
3. the winner publishes ``request.finished`` with a confirm and clears ``outbox_pending``.
A crash between 2 and 3 leaves ``outbox_pending`` set; the sweeper republishes it. Steps 2 and 3 are the rules of
:mod:`shared.lifecycle`, which ingest's fan-out follows too when a CSV cannot be processed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import structlog

from services.aggregator.output_csv import join_results, write_output_csv
from shared.broker import Broker
from shared.database import Database
from shared.lifecycle import end_request, is_open, publish_outbox
from shared.locks import KeyedLocks
from shared.messages import RequestStatus
from shared.storage import Storage

log = structlog.get_logger()


def output_csv_key(request_id: str) -> str:
    return f"outputs/{request_id}/output.csv"


class Finisher:
    def __init__(self, db: Database, storage: Storage, broker: Broker) -> None:
        self.db = db
        self.storage = storage
        self.broker = broker
        self.locks = KeyedLocks()

    async def finish_if_complete(self, request_id: str, *, counted_complete: bool = False) -> bool:
        async with self.locks.hold(request_id):
            return await self.finish_if_complete_locked(request_id, counted_complete=counted_complete)

    async def finish_if_complete_locked(self, request_id: str, *, counted_complete: bool = False) -> bool:
        """The caller holds ``self.locks`` for ``request_id``.

        ``counted_complete``: the progress counters already reach the total. They are incremented only after the
        results are inserted, so they can fall short of the truth but never exceed it, and the exact count (which
        reads every result of the request) can be skipped.
        """
        request = await self.db.requests.find_one({"_id": request_id})
        if request is None or not is_open(request["status"]) or not request.get("fanout_complete"):
            return False
        if not counted_complete:
            settled = await self.db.results.count_documents({"request_id": request_id})
            if settled < request.get("images_total", 0):
                return False
        await self._finish(request)
        return True

    async def _bytes(self, request_id: str) -> tuple[int, int]:
        progress = await self.db.progress.find_one({"_id": request_id}) or {}
        return progress.get("bytes_in", 0), progress.get("bytes_out", 0)

    async def _products(self, request_id: str) -> AsyncIterator[dict[str, Any]]:
        cursor = self.db.products.find({"request_id": request_id}).sort("row", 1).batch_size(500)
        async for product in cursor:
            yield product

    async def _results(self, request_id: str) -> AsyncIterator[dict[str, Any]]:
        cursor = self.db.results.find({"request_id": request_id}).sort([("row", 1), ("index", 1)]).batch_size(1000)
        async for result in cursor:
            yield result

    async def _finish(self, request: dict[str, Any]) -> None:
        request_id = request["_id"]
        spool, size, summary = await write_output_csv(
            join_results(self._products(request_id), self._results(request_id)), request.get("extra_columns", [])
        )
        try:
            key = output_csv_key(request_id)
            await self.storage.put_stream(key, spool, size, "text/csv; charset=utf-8")
        finally:
            spool.close()
        output_url = self.storage.public_url(key)
        status = RequestStatus.COMPLETED if summary.images_done > 0 else RequestStatus.FAILED
        error = None if status is RequestStatus.COMPLETED else "no image could be processed; see the errors column"
        bytes_in, bytes_out = await self._bytes(request_id)
        won = await end_request(
            self.db,
            request,
            status,
            error=error,
            output_csv_url=output_url,
            images_done=summary.images_done,
            images_failed=summary.images_failed,
            images_cached=summary.images_cached,
            images_revalidated=summary.images_revalidated,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
        )
        if not won:
            log.info("finish_lost_race", request_id=request_id)
            return
        await self.db.progress.delete_one({"_id": request_id})  # the exact counts now live in the request
        log.info(
            "request_finished",
            request_id=request_id,  # explicit: the sweeper and a batch of several requests call this too
            status=status.value,
            images_done=summary.images_done,
            images_failed=summary.images_failed,
            images_cached=summary.images_cached,
            output_bytes=size,
        )
        await publish_outbox(self.db, self.broker, request_id)

    async def publish_outbox(self, request_id: str) -> None:
        """The sweeper's way to publish what a crash left in the outbox, under the request's lock."""
        async with self.locks.hold(request_id):
            await publish_outbox(self.db, self.broker, request_id)
