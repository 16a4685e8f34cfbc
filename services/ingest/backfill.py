"""Once per database: list the hours of the requests made before ``created_hour`` existed, for ``GET /requests``.

Ingest runs this at start, before it serves, and remembers in ``request_hours_state`` that it did; every later start
reads that one document and returns. The first run reads every request once (found by ``status``, which an index
leads) and keeps the ids of those without ``created_hour`` on their hour's document as ``legacy_ids``, instead of
writing ``created_hour`` into them: the aggregator or the fan-out may be writing those documents at the same moment,
and on FerretDB either write could be lost (shared/database.py). It also records the oldest hour, where a walk
through the hours stops (shared/request_hours.py).

A request inserted by an ingest from before this change *after* the backfill ran (a rolling upgrade with old
replicas still accepting uploads) has no ``created_hour`` and is not listed; upgrade every ingest replica at once.
"""

from __future__ import annotations

from collections import defaultdict

import structlog

from shared import request_hours
from shared.database import Database
from shared.lifecycle import FINAL_STATUSES, OPEN_STATUSES
from shared.timeutil import hour_key, previous_hour, utcnow

log = structlog.get_logger()

EVERY_REQUEST = {"status": {"$in": [*OPEN_STATUSES, *FINAL_STATUSES]}}


async def index_existing_requests(db: Database) -> None:
    if await request_hours.state(db) is not None:
        return
    now = utcnow()
    legacy: defaultdict[str, list[str]] = defaultdict(list)
    async for request in db.requests.find(EVERY_REQUEST, projection={"created_at": 1, "created_hour": 1}):
        if "created_hour" not in request:
            legacy[hour_key(request["created_at"])].append(request["_id"])
    for hour, ids in sorted(legacy.items()):
        await request_hours.record_hour(db, hour)
        await db.request_hours.update_one({"_id": hour}, {"$set": {"legacy_ids": sorted(ids)}})
    # an hour before this one: another ingest replica whose clock is a little behind may already be accepting uploads
    oldest = min([*legacy, previous_hour(hour_key(now))])
    legacy_requests = sum(len(ids) for ids in legacy.values())
    await request_hours.write_state(db, oldest=oldest, indexed_at=now, legacy_requests=legacy_requests)
    log.info("request_hours_indexed", oldest_hour=oldest, legacy_requests=legacy_requests, legacy_hours=len(legacy))
