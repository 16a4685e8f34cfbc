"""Requests written straight into a database the way ingest records them, for tests that stage a moment of a
request's life (after the upload, after the fan-out) instead of driving it there through the API."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.ingest.records import new_request_document
from shared.database import insert_new
from shared.messages import RequestStatus

HEADER = ["Serial Number", "Product Name", "Input Image Urls"]


def request_document(request_id: str, *, products: int, images: int, webhook_url: str | None = None) -> dict[str, Any]:
    """The document ingest inserts when it accepts an upload (status Queued, raw CSV under ``uploads/``)."""
    return new_request_document(
        request_id,
        csv_key=f"uploads/{request_id}/input.csv",
        csv_sha256="-",
        products_total=products,
        images_total=images,
        header=HEADER,
        extra_columns=[],
        webhook_url=webhook_url,
        idempotency_key=None,
    )


async def insert_as_ingest(database: AsyncDatabase, document: dict[str, Any]) -> None:
    """Insert ``document`` the way ingest does: its hour listed first (shared/request_hours.py), so that
    ``GET /requests`` lists it like an uploaded one."""
    await insert_new(database["request_hours"], [{"_id": document["created_hour"]}])
    await database.requests.insert_one(document)


async def final_request(database: AsyncDatabase, request_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The request's document once it is Completed or Failed, read straight from the database."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    request: dict[str, Any] | None = None
    while loop.time() < deadline:
        request = await database.requests.find_one({"_id": request_id})
        if request is not None and request["status"] in (RequestStatus.COMPLETED.value, RequestStatus.FAILED.value):
            return request
        await asyncio.sleep(0.1)
    raise AssertionError(f"request {request_id} not final after {timeout}s: {request and request['status']}")
