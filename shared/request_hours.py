"""The hours that have requests: how ``GET /requests`` lists the newest requests on a database that can only look
things up by equality.

Our patched FerretDB serves ``_id`` and a top-level equality or ``$in`` on a string from an index, but no sort and no
range (docs/ferretdb.md): "the 20 newest requests" would read and sort every request ever made. So each request
carries ``created_hour``, the UTC hour of its ``created_at`` (indexed), and ``request_hours`` holds one document per
hour that has requests, ``_id`` = the hour key. A page walks the hour keys backwards from where the previous page
stopped with ``{_id: {$in: [...]}}`` (a day's keys first, then 4x more per lookup up to 1,000) and reads the
requests of each hour it finds with ``{created_hour: h}`` until the page is full (services/ingest/listing.py). The
walk stops at the oldest hour that may have requests, which ``request_hours_state`` remembers. A page costs what
it shows plus the rest of the hours it touches, never the database's history.

Requests made before ``created_hour`` existed are indexed once by ingest (services/ingest/backfill.py) without
writing to them: their ids are kept on their hour's document as ``legacy_ids``. (On FerretDB a write to a request
document that its owner writes at the same moment can lose either write; see shared/database.py.)

Writers: ingest inserts an hour's document before the first request of that hour, and runs the backfill once;
retention (services/aggregator/retention.py) deletes the documents of hours before its cutoff whose requests are
all gone and moves the oldest hour forward. Hour documents are inserted and deleted, and only the backfill updates
one, so no two services ever update the same document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.database import IDS_PER_QUERY, Database, find_by_ids, insert_new
from shared.timeutil import hour_key

STATE_ID = "state"


async def record_hour(db: Database, hour: str) -> None:
    """Make sure ``hour`` is listed; called before a request of that hour is inserted, so a listed request's hour
    is always there. An hour listed without requests (the insert failed afterwards) is skipped by the list and
    deleted by retention. A new hour older than the oldest one (a clock far behind, requests written by a tool)
    becomes the oldest, so the walk reaches it."""
    if await insert_new(db.request_hours, [{"_id": hour}]):
        return  # listed already
    current = await state(db)
    if current is not None and hour < current["oldest"]:
        await write_state(db, oldest=hour)


async def state(db: Database) -> dict[str, Any] | None:
    """``{"oldest": <hour key>, "indexed_at": <when the backfill ran>, ...}``; None before ingest's first start."""
    return await db.request_hours_state.find_one({"_id": STATE_ID})


async def write_state(db: Database, **fields: Any) -> None:
    await db.request_hours_state.update_one({"_id": STATE_ID}, {"$set": fields}, upsert=True)


def _legacy_chunks(hour: dict[str, Any]) -> list[list[str]]:
    ids: list[str] = hour.get("legacy_ids", [])
    return [ids[start : start + IDS_PER_QUERY] for start in range(0, len(ids), IDS_PER_QUERY)]


async def requests_of_hour(db: Database, hour: dict[str, Any]) -> list[dict[str, Any]]:
    """Every request created in the hour of this ``request_hours`` document, in no particular order."""
    found = {request["_id"]: request async for request in db.requests.find({"created_hour": hour["_id"]})}
    for request in await find_by_ids(db.requests, hour.get("legacy_ids", [])):
        found.setdefault(request["_id"], request)
    return list(found.values())


async def hour_is_empty(db: Database, hour: dict[str, Any]) -> bool:
    """No request of this hour is left (one index probe per 1,000 ids; stops at the first request found)."""
    if await db.requests.find_one({"created_hour": hour["_id"]}, projection={"_id": 1}) is not None:
        return False
    for ids in _legacy_chunks(hour):
        if await db.requests.find_one({"_id": {"$in": ids}}, projection={"_id": 1}) is not None:
            return False
    return True


def created_fields(now: datetime) -> dict[str, Any]:
    """What a new request document records about its creation; ``created_hour`` is what the list looks up."""
    return {"created_at": now, "created_hour": hour_key(now)}
