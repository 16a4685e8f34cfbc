"""A request's life in the ``requests`` collection, as every service must see it.

Two services end requests (ingest's fan-out when the CSV cannot be processed, the aggregator's finisher when every
image is settled), two read their progress (the API, the finisher) and the sweeper recovers what a crash left
half done; each rule below has this one owner so that they cannot drift apart:

* which statuses are still open (a final status is written once and never changes);
* the write that ends a request: conditional on the request still being open, so one writer wins, and setting
  ``outbox_pending`` in the same document write, so the intent to announce it survives a crash; the writer that
  wins counts the request in ``pixpress_requests_finished_total`` (so it counts once, whoever ends it);
* the counts a request document carries, as :class:`~shared.messages.Progress`;
* the outbox: the ``request.finished`` event built from the document, published with a confirm, then the flag
  cleared. A crash in between leaves the flag set and the sweeper publishes again; the notifier keeps one
  ``webhook-id`` per request, so receivers recognise the duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared import metrics
from shared.broker import Broker
from shared.database import Database, finished_fields
from shared.messages import Progress, RequestFinished, RequestStatus, RoutingKey
from shared.timeutil import utcnow

OPEN_STATUSES = (RequestStatus.QUEUED.value, RequestStatus.PROCESSING.value)
FINAL_STATUSES = (RequestStatus.COMPLETED.value, RequestStatus.FAILED.value)
# the sweeper's queries; both are served by an index (tests/test_ferretdb_pushdown.py)
OPEN_REQUESTS: dict[str, Any] = {"status": {"$in": list(OPEN_STATUSES)}}
OUTBOX_PENDING: dict[str, Any] = {"outbox_pending": True}


def is_open(status: str) -> bool:
    return status in OPEN_STATUSES


def still_open(request_id: str) -> dict[str, Any]:
    """The filter of every write that ends a request: it matches only while no other writer has ended it."""
    return {"_id": request_id, **OPEN_REQUESTS}


def final_status(status: RequestStatus, now: datetime, *, error: str | None, **fields: object) -> dict[str, Any]:
    """The ``$set`` of the write that ends a request (with ``fields`` such as the exact counts)."""
    return {
        "status": status.value,
        "error": error,
        "updated_at": now,
        **fields,
        **finished_fields(now),
        "outbox_pending": True,
    }


async def end_request(
    db: Database, request: Mapping[str, Any], status: RequestStatus, *, error: str | None, **fields: object
) -> bool:
    """End ``request`` (its document: ``_id`` and ``created_at`` are used) with ``status`` unless another writer
    already has; False when one had. The caller then publishes the outbox (:func:`publish_outbox`)."""
    now = utcnow()
    won = await db.requests.update_one(
        still_open(request["_id"]), {"$set": final_status(status, now, error=error, **fields)}
    )
    if won.modified_count == 0:
        return False
    metrics.request_finished(status.value, request["created_at"], now)
    return True


def progress_of(document: Mapping[str, Any]) -> Progress:
    """The counts of a request document (exact once it is final) or of the aggregator's live ``progress``
    document merged into it; counters not written yet are 0."""
    return Progress(**{name: document.get(name, 0) for name in Progress.model_fields})


def completion_event(request: Mapping[str, Any]) -> RequestFinished:
    """The ``request.finished`` event a final request document announces."""
    return RequestFinished(
        request_id=request["_id"],
        status=RequestStatus(request["status"]),
        output_csv_url=request.get("output_csv_url"),
        error=request.get("error"),
        progress=progress_of(request),
        finished_at=request.get("finished_at") or utcnow(),
    )


async def publish_outbox(db: Database, broker: Broker, request_id: str) -> bool:
    """Publish the completion event a final-status write left in the outbox, then clear the flag; False when there
    was nothing to publish. The caller serialises calls per request (one writer per document on FerretDB)."""
    request = await db.requests.find_one({"_id": request_id})
    if request is None or not request.get("outbox_pending"):
        return False
    await broker.publish(RoutingKey.REQUEST_FINISHED, completion_event(request), message_id=request_id)
    await db.requests.update_one({"_id": request_id}, {"$set": {"outbox_pending": False}})
    return True
