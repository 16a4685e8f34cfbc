"""Requests written straight into a database the way ingest records them, for tests that stage a moment of a
request's life (after the upload, after the fan-out) instead of driving it there through the API."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.ingest.records import new_request_document
from shared.database import insert_new

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
