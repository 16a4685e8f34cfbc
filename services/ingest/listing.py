"""``GET /requests``: requests newest first, a page at a time, at a cost that does not grow with history.

The order is the hour a request was created in (``created_hour``), newest first, then ``created_at`` and the id,
newest first. A page is found by walking the hours that have requests backwards (shared/request_hours.py); the
cursor names the last request of the previous page, so the next page starts right after it. Requests uploaded while
a client pages are newer than its cursor and never shift the pages it has not read yet: paging to the end shows
every request that existed when paging began exactly once. The cursor is opaque to clients (base64url) and only
ever selects a starting point: whatever it says, a walk starts no later than the next hour from now and stops at
the oldest hour, so no cursor can make a page expensive.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import request_hours
from shared.database import IDS_PER_QUERY, Database
from shared.timeutil import hour_key, hours_down, next_hour, parse_hour_key, previous_hour, utcnow

# Hour keys in the first lookup of a walk, growing 4x per lookup up to 1,000: a page of recent requests asks for a
# day, not for 41 days (an $in of 500 hour keys cost FerretDB ~15 ms of CPU; bench/request_list.py).
FIRST_HOURS = 24
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


class ListingNotReady(Exception):
    """Ingest has not indexed the existing requests yet (services/ingest/backfill.py runs before it serves)."""


def _milliseconds(moment: datetime) -> int:
    """``created_at`` as stored: BSON dates are whole milliseconds."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MILLISECOND


@dataclass(frozen=True, order=True)
class Position:
    """Where a request stands in the list; a page holds the requests after (below) a position."""

    hour: str
    created_ms: int
    request_id: str

    @classmethod
    def of(cls, request: dict[str, Any]) -> Position:
        created = request["created_at"]
        return cls(request.get("created_hour") or hour_key(created), _milliseconds(created), request["_id"])

    def cursor(self) -> str:
        text = f"{self.hour}|{self.created_ms}|{self.request_id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def from_cursor(cls, cursor: str) -> Position:
        """ValueError unless ``cursor`` is one that :meth:`cursor` wrote."""
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise ValueError("not a cursor") from exc
        hour, created_ms, request_id = text.split("|") if text.count("|") == 2 else ("", "", "")
        if not created_ms.isascii() or not created_ms.isdigit() or len(created_ms) > 15:
            raise ValueError("not a cursor")
        position = cls(parse_hour_key(hour), int(created_ms), str(uuid.UUID(request_id)))
        if position.cursor() != cursor:  # one spelling per position
            raise ValueError("not a cursor")
        return position


@dataclass(frozen=True)
class Page:
    requests: list[dict[str, Any]]
    next: Position | None


async def newest_requests(db: Database, limit: int, before: Position | None = None) -> Page:
    """Up to ``limit`` requests below ``before`` (from the newest when None), and where the next page starts (None
    when nothing is left). Reads one hour past the page at most, to know whether anything is left."""
    state = await request_hours.state(db)
    if state is None:
        raise ListingNotReady
    oldest: str = state["oldest"]
    top = next_hour(hour_key(utcnow()))  # a replica whose clock runs a little ahead
    if before is not None:
        top = min(top, before.hour)
    found: list[dict[str, Any]] = []
    keys = FIRST_HOURS
    while len(found) <= limit:
        hours = hours_down(top, oldest, keys)
        keys = min(keys * 4, IDS_PER_QUERY)
        if not hours:
            break
        documents = await db.request_hours.find({"_id": {"$in": hours}}).to_list(None)
        for hour in sorted(documents, key=lambda document: document["_id"], reverse=True):
            requests = sorted(await request_hours.requests_of_hour(db, hour), key=Position.of, reverse=True)
            found += [request for request in requests if before is None or Position.of(request) < before]
            if len(found) > limit:
                break
        top = previous_hour(hours[-1])
    page = found[:limit]
    return Page(page, Position.of(page[-1]) if len(found) > limit else None)

