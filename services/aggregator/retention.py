"""Retention: finished requests older than ``PIXPRESS_RETENTION_DAYS`` are deleted with everything of theirs.

A service that runs for months must not grow without bound. What goes, per request: its stored objects (the raw
upload, the compressed images, the output CSV), its products, results, progress counters, webhook delivery record
and idempotency key, and last the request itself. Requests that are not finished are never touched, nor is a
finished one whose completion event is not yet published (``outbox_pending``).

Finding expired requests without reading the kept ones: every final-status write records the UTC hour the request
finished (``finished_hour``, indexed; :func:`shared.database.finished_fields`). A cursor document remembers the
last hour whose requests are all deleted; a pass asks for the whole hours after it that lie before the cutoff with
one ``$in`` per 1,000 hours (an index lookup on MongoDB and on our FerretDB), then for the hour that holds the
cutoff, filtered by ``finished_at``. Its cost follows what expires, not what is kept. Without a cursor (retention
just turned on) the first pass reads the finished requests once, tags those that finished before ``finished_hour``
existed, and starts at the oldest hour.

Bounded: a pass deletes at most ``pass_budget`` documents and objects, each database delete at most
``IDS_PER_QUERY`` ids; what is left waits for the next sweep. Crash-safe and idempotent: a request's own document
goes last, so a pass cut short anywhere finds the request again and finishes the job, and every step deletes only
what is still there, so aggregator replicas may run passes at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection

from shared.database import IDS_PER_QUERY, Database
from shared.lifecycle import FINAL_STATUSES
from shared.storage import Storage
from shared.timeutil import hour_key, hour_keys, next_hour, previous_hour, utcnow

log = structlog.get_logger()

CURSOR_ID = "cursor"
PASS_BUDGET = 20_000  # documents and objects per pass: at the default 30 s sweep, ~2.4 million an hour at most
HOURS_PER_QUERY = 1000
REQUESTS_PER_QUERY = 100
_REQUEST_FIELDS = {"_id": 1, "idempotency_key": 1}


def expired_hours_filter(hours: list[str]) -> dict[str, Any]:
    """Requests that finished in one of ``hours`` (whole hours before the cutoff) and may go."""
    return {"finished_hour": {"$in": hours}, "outbox_pending": {"$ne": True}}


def cutoff_hour_filter(cutoff: datetime) -> dict[str, Any]:
    """Requests that finished in the hour holding ``cutoff``, before it, and may go."""
    return {"finished_hour": hour_key(cutoff), "finished_at": {"$lt": cutoff}, "outbox_pending": {"$ne": True}}


def request_object_prefixes(request_id: str) -> list[str]:
    """Every stored object of a request lives under one of these (see ingest/upload.py, compressor/worker.py,
    aggregator/finisher.py); nothing under them is shared with another request."""
    return [f"uploads/{request_id}/", f"images/{request_id}/", f"outputs/{request_id}/"]


async def delete_request_objects(storage: Storage, request_id: str, limit: int) -> int:
    """Deletes up to ``limit`` of the request's stored objects; returns how many (fewer than ``limit``: all gone).

    The one place that decides which objects die with a request: objects shared between requests must never be
    deleted here while a request that is kept still points to them.
    """
    deleted = 0
    for prefix in request_object_prefixes(request_id):
        deleted += await storage.delete_prefix(prefix, limit - deleted)
        if deleted >= limit:
            break
    return deleted


@dataclass
class Budget:
    left: int

    def spend(self, amount: int) -> None:
        self.left -= amount


class Retention:
    def __init__(self, db: Database, storage: Storage, days: int, pass_budget: int = PASS_BUDGET) -> None:
        self.db = db
        self.storage = storage
        self.keep = timedelta(days=days)
        self.pass_budget = pass_budget

    async def run_once(self) -> int:
        """One bounded pass; returns the number of requests it deleted completely."""
        cutoff = utcnow() - self.keep
        budget = Budget(self.pass_budget)
        deleted = 0
        start = await self._start_hour()
        hours = hour_keys(start, hour_key(cutoff))
        held = False  # a request that must wait keeps the cursor where it is
        for first in range(0, len(hours), HOURS_PER_QUERY):
            chunk = hours[first : first + HOURS_PER_QUERY]
            done, count = await self._expire(expired_hours_filter(chunk), budget)
            deleted += count
            if not done:
                break
            waiting = await self._first_waiting_hour(chunk)
            if waiting is not None and not held:
                await self._move_cursor(previous_hour(waiting))
            held = held or waiting is not None
            if not held:
                await self._move_cursor(chunk[-1])
        else:
            deleted += (await self._expire(cutoff_hour_filter(cutoff), budget))[1]
        if deleted or budget.left < self.pass_budget:
            log.info(
                "retention_pass",
                requests_deleted=deleted,
                items_deleted=self.pass_budget - budget.left,
                budget_spent=budget.left <= 0,
                cutoff=cutoff.isoformat(),
            )
        return deleted

    async def _expire(self, query: dict[str, Any], budget: Budget) -> tuple[bool, int]:
        """Deletes the requests ``query`` selects; returns (all of them gone, how many went)."""
        deleted = 0
        while budget.left > 0:
            batch = await self.db.requests.find(query, projection=_REQUEST_FIELDS).limit(REQUESTS_PER_QUERY).to_list()
            if not batch:
                return True, deleted
            for request in batch:
                if not await self._delete_request(request, budget):
                    return False, deleted
                deleted += 1
        return False, deleted

    async def _delete_request(self, request: dict[str, Any], budget: Budget) -> bool:
        """Everything of one request, its own document last; False when the budget ran out first."""
        request_id = request["_id"]
        if budget.left <= 0:
            return False
        objects = await delete_request_objects(self.storage, request_id, budget.left)
        budget.spend(objects)
        if budget.left <= 0:
            return False
        documents = 0
        for collection in (self.db.results, self.db.products):
            complete, count = await self._delete_documents(collection, request_id, budget)
            documents += count
            if not complete:
                return False
        singles: list[tuple[AsyncCollection, dict[str, Any]]] = [
            (self.db.progress, {"_id": request_id}),
            (self.db.webhooks, {"_id": request_id}),
            (self.db.idempotency_keys, {"_id": request.get("idempotency_key"), "request_id": request_id}),
            (self.db.requests, {"_id": request_id}),  # last: until it is gone, the next pass comes back for the rest
        ]
        for collection, query in singles:
            if query["_id"] is not None:
                documents += (await collection.delete_one(query)).deleted_count
        budget.spend(4)
        log.info("retention_deleted_request", request_id=request_id, objects=objects, documents=documents)
        return True

    @staticmethod
    async def _delete_documents(collection: AsyncCollection, request_id: str, budget: Budget) -> tuple[bool, int]:
        """The request's documents in ``collection``, ``IDS_PER_QUERY`` at a time (FerretDB deletes by a list of
        ids: one unbounded ``delete_many`` of a large request would exceed SQLite's parameter limit)."""
        deleted = 0
        while budget.left > 0:
            size = min(IDS_PER_QUERY, budget.left)
            cursor = collection.find({"request_id": request_id}, projection={"_id": 1}).limit(size)
            ids = [document["_id"] async for document in cursor]
            if not ids:
                return True, deleted
            result = await collection.delete_many({"_id": {"$in": ids}})
            deleted += result.deleted_count
            budget.spend(len(ids))
        return False, deleted

    async def _first_waiting_hour(self, hours: list[str]) -> str | None:
        """The earliest of ``hours`` still holding a request that must wait (its completion event is unpublished)."""
        waiting = self.db.requests.find({"finished_hour": {"$in": hours}}, projection={"finished_hour": 1})
        found = [document["finished_hour"] async for document in waiting]
        return min(found) if found else None

    async def _move_cursor(self, through: str) -> None:
        await self.db.retention_state.update_one({"_id": CURSOR_ID}, {"$set": {"done_through": through}}, upsert=True)

    async def _start_hour(self) -> str:
        state = await self.db.retention_state.find_one({"_id": CURSOR_ID})
        if state is not None:
            return next_hour(state["done_through"])
        return await self._discover()

    async def _discover(self) -> str:
        """First pass ever: tag finished requests that have no ``finished_hour`` and start at the oldest hour.

        Reads every finished request once (they are found by ``status``, which an index leads); later passes never
        do this again.
        """
        oldest = hour_key(utcnow())
        tagged = 0
        for status in FINAL_STATUSES:
            cursor = self.db.requests.find(
                {"status": status}, projection={"finished_hour": 1, "finished_at": 1, "updated_at": 1}
            )
            async for request in cursor:
                hour = request.get("finished_hour")
                if hour is None:
                    hour = hour_key(request.get("finished_at") or request["updated_at"])
                    await self.db.requests.update_one({"_id": request["_id"]}, {"$set": {"finished_hour": hour}})
                    tagged += 1
                oldest = min(oldest, hour)
        await self._move_cursor(previous_hour(oldest))
        log.info("retention_started", oldest_hour=oldest, tagged_requests=tagged)
        return oldest
