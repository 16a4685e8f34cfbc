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

The list of requests (``GET /requests``) keeps one document per hour that has requests (shared/request_hours.py).
After deleting requests, a pass walks the hours from the oldest one the list may visit up to the cutoff's hour,
deletes the documents of hours whose requests are all gone, and moves the oldest hour to the first that still has
one, so the list's walk shrinks with the data. Hours at or after the cutoff's hour are never touched.

Bounded: a pass deletes at most ``pass_budget`` documents and objects, each database delete at most
``IDS_PER_QUERY`` ids; what is left waits for the next sweep. Crash-safe and idempotent: a request's own document
goes last, so a pass cut short anywhere finds the request again and finishes the job, and every step deletes only
what is still there, so aggregator replicas may run passes at the same time.

Shared outputs (the output cache, ``images/c/``; shared/cache.py, docs/cache.md) belong to no request. Before a
batch of an expired request's results is deleted, the shared objects they point to become ``cache_candidates``
(a durable list, so a crash between the two loses nothing). Each pass then takes candidates one by one and deletes
the object only when no result points to it any more (an index lookup on ``cache_object``) and it has not been
used for the whole retention window (its ``Last-Modified``, which compressors move forward when they reuse it).
URL records (``url_validators``) expire by the hour they were stored, like requests by the hour they finished.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection

from shared import request_hours
from shared.cache import may_delete
from shared.database import IDS_PER_QUERY, Database, find_by_ids, insert_new
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
    aggregator/finisher.py), except its shared outputs (``images/c/``, see ``Retention._collect_candidates``);
    nothing under them is shared with another request."""
    return [f"uploads/{request_id}/", f"images/{request_id}/", f"outputs/{request_id}/"]


async def delete_request_objects(storage: Storage, request_id: str, limit: int) -> int:
    """Deletes up to ``limit`` of the request's stored objects; returns how many (fewer than ``limit``: all gone).

    Objects shared between requests are not among them: they go through ``cache_candidates``.
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
    def __init__(
        self,
        db: Database,
        storage: Storage,
        days: int,
        pass_budget: int = PASS_BUDGET,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.storage = storage
        self.days = days
        self.keep = timedelta(days=days)
        self.pass_budget = pass_budget
        self.clock = clock

    async def run_once(self) -> int:
        """One bounded pass; returns the number of requests it deleted completely."""
        now = self.clock()
        cutoff = now - self.keep
        budget = Budget(self.pass_budget)
        deleted = 0
        start = await self._start_hour()
        hours = hour_keys(start, hour_key(cutoff))
        held = False  # a request that must wait keeps the cursor where it is
        for first in range(0, len(hours), HOURS_PER_QUERY):
            chunk = hours[first : first + HOURS_PER_QUERY]
            done, count = await self._expire(expired_hours_filter(chunk), budget)
            deleted += count
            if not done or not await self._expire_url_records(chunk, budget):
                break
            waiting = await self._first_waiting_hour(chunk)
            if waiting is not None and not held:
                await self._move_cursor(previous_hour(waiting))
            held = held or waiting is not None
            if not held:
                await self._move_cursor(chunk[-1])
        else:
            deleted += (await self._expire(cutoff_hour_filter(cutoff), budget))[1]
        await self._forget_empty_hours(hour_key(cutoff), budget)
        await self._collect_candidates(now, budget)
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
        for collection, nominate in ((self.db.results, True), (self.db.products, False)):
            complete, count = await self._delete_documents(collection, request_id, budget, nominate)
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

    async def _delete_documents(
        self, collection: AsyncCollection, request_id: str, budget: Budget, nominate: bool = False
    ) -> tuple[bool, int]:
        """The request's documents in ``collection``, ``IDS_PER_QUERY`` at a time (FerretDB deletes by a list of
        ids: one unbounded ``delete_many`` of a large request would exceed SQLite's parameter limit). With
        ``nominate`` (results), the shared outputs a batch points to become candidates before it goes."""
        deleted = 0
        fields = {"_id": 1, "cache_object": 1} if nominate else {"_id": 1}
        while budget.left > 0:
            size = min(IDS_PER_QUERY, budget.left)
            cursor = collection.find({"request_id": request_id}, projection=fields).limit(size)
            documents = [document async for document in cursor]
            if not documents:
                return True, deleted
            ids = [document["_id"] for document in documents]
            if nominate:
                await self._nominate({document.get("cache_object") for document in documents} - {None})
            result = await collection.delete_many({"_id": {"$in": ids}})
            deleted += result.deleted_count
            budget.spend(len(ids))
        return False, deleted

    async def _forget_empty_hours(self, cutoff_hour: str, budget: Budget) -> None:
        """Delete the list's hour documents before ``cutoff_hour`` that have no request left, and move its oldest
        hour to the first one that does (or to ``cutoff_hour``). Nothing before ingest indexed the requests."""
        listing = await request_hours.state(self.db)
        if listing is None:
            return
        hours = hour_keys(listing["oldest"], cutoff_hour)
        oldest = cutoff_hour
        for first in range(0, len(hours), HOURS_PER_QUERY):
            chunk = hours[first : first + HOURS_PER_QUERY]
            for hour in sorted(await find_by_ids(self.db.request_hours, chunk), key=lambda document: document["_id"]):
                if budget.left <= 0 or not await request_hours.hour_is_empty(self.db, hour):
                    oldest = min(oldest, hour["_id"])
                    continue
                await self.db.request_hours.delete_one({"_id": hour["_id"]})
                budget.spend(1)
        if oldest > listing["oldest"]:  # on a young database the cutoff lies before the oldest hour
            await request_hours.write_state(self.db, oldest=oldest)
            log.info("request_hours_oldest_moved", oldest_hour=oldest)

    async def _nominate(self, keys: set[str]) -> None:
        """Shared objects whose references are about to go: checked by ``_collect_candidates``."""
        if not keys:
            return
        await insert_new(self.db.cache_candidates, [{"_id": key} for key in sorted(keys)])  # some may be already

    async def _collect_candidates(self, now: datetime, budget: Budget) -> None:
        """Delete the candidates' objects that nothing points to and nobody used for the whole window.

        A candidate is claimed by deleting it (one claimant wins, on MongoDB with several aggregators too) before
        its object is looked at: a crash after the claim leaves at worst an unreferenced object in storage, never a
        reference to a deleted one. Kept objects leave the list too; whichever request points to them next puts
        them back when it expires.
        """
        while budget.left > 0:
            batch = await self.db.cache_candidates.find({}).limit(min(REQUESTS_PER_QUERY, budget.left)).to_list()
            if not batch:
                return
            for candidate in batch:
                key = candidate["_id"]
                if (await self.db.cache_candidates.delete_one({"_id": key})).deleted_count == 0:
                    continue  # another pass took it
                budget.spend(1)
                if await self.db.results.find_one({"cache_object": key}, projection={"_id": 1}) is not None:
                    continue  # a kept request points to it
                stored = await self.storage.stat(key)
                if stored is None:
                    continue
                if not may_delete(stored.last_modified, now, self.days):
                    log.info("retention_kept_shared_object", key=key, last_modified=stored.last_modified.isoformat())
                    continue
                await self.storage.delete(key)
                budget.spend(1)
                log.info("retention_deleted_shared_object", key=key)

    async def _expire_url_records(self, hours: list[str], budget: Budget) -> bool:
        """URL records stored in ``hours`` (whole hours before the cutoff); False when the budget ran out first.
        Deleting a record that is still useful costs one full download of its URL (whose bytes then find their
        output by hash, and store a new record): records do not follow their use, so nothing writes on a 304."""
        query = {"stored_hour": {"$in": hours}}
        while budget.left > 0:
            size = min(IDS_PER_QUERY, budget.left)
            cursor = self.db.url_validators.find(query, projection={"_id": 1}).limit(size)
            ids = [document["_id"] async for document in cursor]
            if not ids:
                return True
            await self.db.url_validators.delete_many({"_id": {"$in": ids}, **query})
            budget.spend(len(ids))
        return False

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
