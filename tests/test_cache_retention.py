"""Retention with shared outputs (docs/cache.md): an object stays while any kept request points to it or while it was
used within the window, and goes when neither holds; URL records expire by the hour they were stored.

Passes of the aggregator's own retention code run on a database and a bucket of their own, with a clock moved
forward (MinIO's Last-Modified cannot be moved back), so the ages are real and the references are real documents.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from services.aggregator.retention import Retention
from services.aggregator.tracker import result_document, url_record
from shared.cache import shared_object_key
from shared.database import Database, finished_fields
from shared.messages import ImageResult, SourceRecord
from shared.settings import Settings
from shared.storage import Storage
from shared.timeutil import utcnow
from tests.support.scratch import scratch_stores

DAYS = 30


@pytest.fixture
async def scratch() -> AsyncIterator[tuple[Database, Storage, Settings]]:
    async with scratch_stores("cache-retention") as stores:
        yield stores


async def shared_object(storage: Storage) -> str:
    key = shared_object_key(uuid.uuid4().hex * 2, "jpg")
    await storage.put_bytes(key, b"jpeg", "image/jpeg", {"codec": "dct"})
    return key


async def finished_request(db: Database, finished: datetime, outputs: list[str]) -> str:
    """A finished request whose results point to ``outputs``, as the aggregator leaves it."""
    request_id = str(uuid.uuid4())
    await db.requests.insert_one(
        {"_id": request_id, "status": "Completed", "created_at": finished, "updated_at": finished}
        | finished_fields(finished)
    )
    results = [
        ImageResult(
            request_id=request_id,
            product_id=f"{request_id}:{row}",
            row=row,
            index=0,
            ok=True,
            output_url=f"http://minio/{key}",
            cached=row > 1,
            cache="same_bytes" if row > 1 else None,
            cache_object=key,
        )
        for row, key in enumerate(outputs, start=1)
    ]
    if results:
        await db.results.insert_many([result_document(result) for result in results])
    return request_id


def clock(at: datetime):
    return lambda: at


async def test_a_shared_object_goes_only_when_no_kept_request_points_to_it_and_the_window_passed(scratch):
    db, storage, _settings = scratch
    now = utcnow()
    both, only_old = await shared_object(storage), await shared_object(storage)
    # seen from 31 days on, every object here is older than the window
    later = now + timedelta(days=DAYS + 1)
    old = await finished_request(db, now - timedelta(days=10), [both, only_old])
    kept = await finished_request(db, now + timedelta(days=2), [both])  # finished after the cutoff of `later`
    await Retention(db, storage, DAYS, clock=clock(later)).run_once()

    assert await db.requests.count_documents({"_id": old}) == 0
    assert await db.requests.count_documents({"_id": kept}) == 1
    assert await storage.stat(only_old) is None  # nothing points to it, unused for the window
    assert await storage.stat(both) is not None  # the kept request points to it
    assert await db.cache_candidates.count_documents({}) == 0

    # when the last request pointing to it expires, it goes too
    await Retention(db, storage, DAYS, clock=clock(now + timedelta(days=DAYS + 3))).run_once()
    assert await db.requests.count_documents({"_id": kept}) == 0
    assert await storage.stat(both) is None


async def test_a_shared_object_used_within_the_window_stays_though_nothing_points_to_it_yet(scratch):
    """Its last use may belong to a result still on its way to the aggregator."""
    db, storage, _settings = scratch
    now = utcnow()
    recent = await shared_object(storage)
    old = await finished_request(db, now - timedelta(days=DAYS + 5), [recent])
    await Retention(db, storage, DAYS, clock=clock(now)).run_once()
    assert await db.requests.count_documents({"_id": old}) == 0
    assert await db.results.count_documents({}) == 0
    assert await storage.stat(recent) is not None
    assert await db.cache_candidates.count_documents({}) == 0


async def test_a_candidate_left_by_a_pass_cut_short_is_checked_by_the_next(scratch):
    db, storage, _settings = scratch
    now = utcnow()
    keys = [await shared_object(storage) for _ in range(3)]
    await finished_request(db, now - timedelta(days=5), keys)
    later = clock(now + timedelta(days=DAYS + 1))
    # a budget that runs out after the results are gone, before every candidate was checked
    await Retention(db, storage, DAYS, pass_budget=5, clock=later).run_once()
    assert await db.results.count_documents({}) == 0
    assert await db.cache_candidates.count_documents({}) > 0
    for _ in range(5):
        await Retention(db, storage, DAYS, pass_budget=5, clock=later).run_once()
    assert await db.cache_candidates.count_documents({}) == 0
    assert [await storage.stat(key) for key in keys] == [None] * 3


async def test_url_records_expire_with_the_hour_they_were_stored_in(scratch):
    db, storage, _settings = scratch
    now = utcnow()
    source = SourceRecord(sha256="a" * 64, size=1, etag='"1"', object_key=shared_object_key("b" * 64, "jpg"))
    stale = url_record(source.model_copy(update={"url_id": "c" * 64}), now - timedelta(days=DAYS + 2))
    fresh = url_record(source.model_copy(update={"url_id": "d" * 64}), now - timedelta(days=1))
    await db.url_validators.insert_many([stale, fresh])
    await finished_request(db, now - timedelta(days=DAYS + 3), [])  # where retention's hours begin
    await Retention(db, storage, DAYS, clock=clock(now)).run_once()
    assert [doc["_id"] async for doc in db.url_validators.find({})] == ["d" * 64]
