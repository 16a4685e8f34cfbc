"""``GET /requests``: newest first, paged by an opaque cursor, every request once however uploads arrive meanwhile,
built on the hours that have requests (shared/request_hours.py) so that a page never reads the whole history.

The route is tested on the running stack; the walk through the hours, the backfill of requests from before
``created_hour`` and retention's cleanup of the hours run against the real FerretDB on a scratch database, where
the hours can be laid out at will.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from services.aggregator.retention import Retention
from services.ingest.backfill import index_existing_requests
from services.ingest.listing import Position, newest_requests
from shared import request_hours
from shared.api_models import RequestsPage
from shared.database import Database
from shared.settings import Settings
from shared.storage import Storage
from shared.timeutil import hour_key, previous_hour, utcnow
from tests.support.apps import serve_api
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.photos import encode, photo
from tests.support.servers import ImageHost
from tests.support.staged import request_document


async def get_json(http: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{API}{path}") as answer:
        return answer.status, await answer.json(content_type=None)


async def page_of(http: aiohttp.ClientSession, path: str) -> dict[str, Any]:
    status, body = await get_json(http, path)
    assert status == 200, body
    RequestsPage.model_validate(body)
    return body


async def upload_id(http: aiohttp.ClientSession, rows: list[tuple[str, str, list[str]]]) -> str:
    answer = await upload(http, csv_text(rows))
    assert answer.status == 200, await answer.text()
    return (await answer.json())["request_id"]


async def test_the_newest_request_comes_first_as_status_shows_it_with_live_counts(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    missing = image_host.url("/img/absent.jpg")  # a 404: fails at once, the request ends Failed
    finished = [await upload_id(http, [(f"F{n}", f"Finished {n}", [missing])]) for n in range(3)]
    for request_id in finished:
        assert (await wait_final(http, request_id))["status"] == "Failed"
    # open: one image done, the other held by the host, so the live counts stand still while we compare
    image_host.add("done.jpg", encode(photo("coffee.png"), "JPEG", quality=90))
    image_host.add("held.jpg", encode(photo("chelsea.png"), "JPEG", quality=90))
    held = asyncio.Event()

    def hold_one_image(name: str, _request: object) -> None:  # runs just before the host looks at `hold`
        image_host.hold = held if name == "held.jpg" else None

    image_host.on_hit = hold_one_image
    urls = [image_host.url("/img/done.jpg"), image_host.url("/img/held.jpg")]
    running = await upload_id(http, [("O1", "Open", urls)])
    try:
        for _ in range(200):
            _, live = await get_json(http, f"/status/{running}")
            if live["progress"]["images_done"] == 1:
                break
            await asyncio.sleep(0.1)
        assert live["status"] == "Processing" and live["progress"]["images_done"] == 1, live

        page = await page_of(http, "/requests?limit=4")
        assert [item["request_id"] for item in page["items"]] == [running, *reversed(finished)]
        for item in page["items"]:
            assert item == (await get_json(http, f"/status/{item['request_id']}"))[1]
        assert page["next"].startswith("/requests?limit=4&before=")
        default = await page_of(http, "/requests")
        assert default["items"][:4] == page["items"]
        db = Database(Settings())
        try:
            assert len(default["items"]) == min(20, await db.requests.count_documents({}))
        finally:
            await db.close()
    finally:
        held.set()
    assert (await wait_final(http, running))["status"] == "Completed"


async def test_paging_to_the_end_shows_every_request_once_while_uploads_arrive(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    missing = image_host.url("/img/absent.jpg")
    for n in range(5):  # at least a few pages, whatever the database held before
        await upload_id(http, [(f"B{n}", f"Before {n}", [missing])])
    db = Database(Settings())
    try:
        existing = {document["_id"] async for document in db.requests.find({}, projection={"_id": 1})}
        seen: list[str] = []
        arrived: list[str] = []
        path: str | None = "/requests?limit=3"
        pages = 0
        while path:
            page = await page_of(http, path)
            seen += [item["request_id"] for item in page["items"]]
            path = page.get("next")
            pages += 1
            if pages <= 4:  # uploads land between pages, newer than every cursor handed out so far
                arrived.append(await upload_id(http, [(f"N{pages}", f"New {pages}", [missing])]))
        assert len(seen) == len(set(seen)), "a request was listed twice"
        assert not set(arrived) & set(seen), "an upload made while paging shifted a later page"
        still_there = {document["_id"] async for document in db.requests.find({}, projection={"_id": 1})}
        missed = (existing & still_there) - set(seen)  # retention may delete an old request meanwhile
        assert not missed, f"{len(missed)} requests never listed"
        assert pages >= 2 and len(seen) >= 5
        # and they were all listed: a fresh first page starts with the newest of them
        newest = await page_of(http, "/requests?limit=4")
        assert [item["request_id"] for item in newest["items"]] == list(reversed(arrived))
    finally:
        await db.close()


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("limit=0", "bad-paging"),
        ("limit=101", "bad-paging"),
        ("limit=ten", "bad-paging"),
        ("limit=1_0", "bad-paging"),
        ("before=", "bad-cursor"),
        ("before=not-a-cursor", "bad-cursor"),
        ("before=" + cursor_of("2026-01-01T10|1|not-a-uuid"), "bad-cursor"),
        ("before=" + cursor_of(f"2026-13-01T10|1|{uuid.uuid4()}"), "bad-cursor"),
        ("before=" + cursor_of(f"2026-01-01T10|-1|{uuid.uuid4()}"), "bad-cursor"),
        ("before=" + cursor_of(f"2026-01-01T10|1|{uuid.uuid4()}|1"), "bad-cursor"),
    ],
)
async def test_a_bad_limit_or_cursor_is_refused_as_a_problem(stack: str, http: aiohttp.ClientSession, query, problem):
    async with http.get(f"{API}/requests?{query}") as answer:
        assert answer.status == 400
        assert answer.content_type == "application/problem+json"
        assert (await answer.json(content_type=None))["type"].endswith(f"/{problem}")


async def test_a_cursor_in_another_spelling_is_refused(stack: str, http: aiohttp.ClientSession):
    """The cursor is opaque: only the exact text the server wrote is accepted (padded base64 is not)."""
    cursor = Position(hour_key(utcnow()), 1, str(uuid.uuid4())).cursor()
    status, _ = await get_json(http, f"/requests?before={cursor}")
    assert status == 200
    status, body = await get_json(http, f"/requests?before={cursor}%3D%3D")
    assert status == 400 and body["type"].endswith("/bad-cursor")


async def test_the_list_needs_the_api_key_when_the_server_has_one(stack: str):
    async with serve_api(Settings(api_key=SecretStr("list-key"))) as client:
        refused = await client.get("/requests")
        assert refused.status == 401
        listed = await client.get("/requests?limit=2", headers={"X-API-Key": "list-key"})
        assert listed.status == 200
        assert len(RequestsPage.model_validate(await listed.json()).items) == 2


# --- the walk through the hours, on a scratch database --------------------------------------------------------


@pytest.fixture
async def scratch() -> AsyncIterator[Database]:
    settings = Settings(mongo_db=f"pixpress_test_list_{uuid.uuid4().hex[:8]}")
    db = Database(settings)
    await db.connect()
    try:
        yield db
    finally:
        await db.client.drop_database(settings.mongo_db)
        await db.close()


async def hour_of(db: Database, request_id: str) -> str:
    document = await db.requests.find_one({"_id": request_id})
    assert document is not None
    return hour_key(document["created_at"])


async def insert_request(db: Database, hours_ago: float, *, legacy: bool = False) -> str:
    """A request as ingest inserts it, created ``hours_ago``; ``legacy``: as an ingest from before created_hour."""
    request_id = str(uuid.uuid4())
    document = request_document(request_id, products=1, images=1)
    created = utcnow() - timedelta(hours=hours_ago)
    document.update(created_at=created, updated_at=created, created_hour=hour_key(created))
    if legacy:
        del document["created_hour"]
    else:
        await request_hours.record_hour(db, document["created_hour"])
    await db.requests.insert_one(document)
    return request_id


async def walk(db: Database, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    before: Position | None = None
    while True:
        page = await newest_requests(db, limit, before)
        pages.append([request["_id"] for request in page.requests])
        if page.next is None:
            return pages
        before = page.next


async def test_pages_walk_back_through_hours_months_apart_and_requests_from_before_the_hours(scratch: Database):
    db = scratch
    legacy_old = await insert_request(db, 24 * 200, legacy=True)  # made by an ingest from before created_hour
    legacy_recent = await insert_request(db, 3.2, legacy=True)
    await index_existing_requests(db)
    state = await request_hours.state(db)
    assert state is not None and state["legacy_requests"] == 2 and state["oldest"] == await hour_of(db, legacy_old)
    assert sorted([document["_id"] async for document in db.request_hours.find({})]) == sorted(
        [await hour_of(db, legacy_old), await hour_of(db, legacy_recent)]
    )
    assert await db.requests.count_documents({"created_hour": {"$exists": True}}) == 0  # nothing written to them
    await index_existing_requests(db)  # remembered: a second start changes nothing
    assert await request_hours.state(db) == state
    # 2,000 hours apart needs more than one $in of 1,000 hour keys
    created = [await insert_request(db, hours) for hours in (24 * 90, 3.5, 3.1, 0.2, 0.1)]
    expected = [created[4], created[3], created[2], legacy_recent, created[1], created[0], legacy_old]
    pages = await walk(db, 2)
    assert pages == [expected[0:2], expected[2:4], expected[4:6], expected[6:7]]
    assert await walk(db, 7) == [expected]
    assert await walk(db, 100) == [expected]


async def test_retention_forgets_the_hours_it_emptied_and_moves_the_oldest_hour(scratch: Database):
    db = scratch
    await index_existing_requests(db)
    await request_hours.write_state(db, oldest=hour_key(utcnow() - timedelta(days=50)))
    kept_old = await insert_request(db, 24 * 45)  # still Queued: retention never deletes an unfinished request
    emptied = [hour_key(utcnow() - timedelta(days=days)) for days in (48, 40)]
    for hour in emptied:  # their requests were deleted already
        await request_hours.record_hour(db, hour)
    recent = await insert_request(db, 1)
    storage = Storage(Settings())

    await Retention(db, storage, days=30).run_once()
    hours = sorted([document["_id"] async for document in db.request_hours.find({})])
    assert hours == [await hour_of(db, kept_old), await hour_of(db, recent)]
    state = await request_hours.state(db)
    assert state is not None and state["oldest"] == hours[0]
    assert await walk(db, 10) == [[recent, kept_old]]

    await db.requests.delete_one({"_id": kept_old})  # gone: its hour goes too, and the oldest hour moves up
    await Retention(db, storage, days=30).run_once()
    assert [document["_id"] async for document in db.request_hours.find({})] == [hours[1]]
    state = await request_hours.state(db)
    assert state is not None and hours[0] < state["oldest"] <= hour_key(utcnow() - timedelta(days=30))
    assert await walk(db, 10) == [[recent]]


async def test_an_hour_listed_without_requests_is_skipped(scratch: Database):
    """An upload that failed after its hour was recorded leaves an empty hour: the list passes over it."""
    db = scratch
    await index_existing_requests(db)
    first = await insert_request(db, 0.5)
    await request_hours.record_hour(db, previous_hour(hour_key(utcnow())))
    assert await walk(db, 1) == [[first]]


async def test_an_hour_older_than_the_oldest_becomes_the_oldest(scratch: Database):
    """Requests written after the backfill with an older ``created_at`` (a clock far behind, a tool writing
    history) are still reached by the walk."""
    db = scratch
    await index_existing_requests(db)  # an empty database: the oldest hour is the previous one
    recent = await insert_request(db, 0)
    older = await insert_request(db, 24 * 10)
    state = await request_hours.state(db)
    assert state is not None and state["oldest"] == await hour_of(db, older)
    assert await walk(db, 5) == [[recent, older]]
