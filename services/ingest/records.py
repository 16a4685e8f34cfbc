"""Shapes of the request and product documents, and their public (JSON) views."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from services.ingest.csv_parser import ProductRow
from shared.database import product_id
from shared.messages import Progress, RequestStatus
from shared.timeutil import utcnow


def new_request_document(
    request_id: str,
    *,
    csv_key: str,
    csv_sha256: str,
    products_total: int,
    images_total: int,
    header: list[str],
    extra_columns: list[str],
    webhook_url: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    now = utcnow()
    document: dict[str, Any] = {
        "_id": request_id,
        "status": RequestStatus.QUEUED.value,
        "created_at": now,
        "updated_at": now,
        "csv_key": csv_key,
        "csv_sha256": csv_sha256,
        "header": header,
        "extra_columns": extra_columns,
        "webhook_url": webhook_url,
        "products_total": products_total,
        "images_total": images_total,
        "images_done": 0,
        "images_failed": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "fanout_cursor": 0,
        "fanout_complete": False,
        "output_csv_url": None,
        "error": None,
    }
    if idempotency_key is not None:
        document["idempotency_key"] = idempotency_key
    return document


def product_document(request_id: str, row: ProductRow) -> dict[str, Any]:
    return {
        "_id": product_id(request_id, row.row),
        "request_id": request_id,
        "row": row.row,
        "status": True,
        "serial_number": row.serial_number,
        "product_name": row.product_name,
        "extra": row.extra,
        "input_image_urls": row.urls,
    }


def progress_of(document: dict[str, Any]) -> Progress:
    return Progress(
        products_total=document.get("products_total", 0),
        images_total=document.get("images_total", 0),
        images_done=document.get("images_done", 0),
        images_failed=document.get("images_failed", 0),
        bytes_in=document.get("bytes_in", 0),
        bytes_out=document.get("bytes_out", 0),
        images_cached=document.get("images_cached", 0),
        images_revalidated=document.get("images_revalidated", 0),
    )


def _counts(live: dict[str, Any]) -> dict[str, Any]:
    keys = ("images_done", "images_failed", "bytes_in", "bytes_out", "images_cached", "images_revalidated")
    return {key: live.get(key, 0) for key in keys}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


def status_view(document: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    """The seed's status body plus additive fields; ``output_csv_url`` only once there is one.

    ``live`` is the aggregator's progress document; once the request is final its exact counts are in the
    request itself.
    """
    final = document["status"] in (RequestStatus.COMPLETED.value, RequestStatus.FAILED.value)
    progress = progress_of(document if final or not live else {**document, **_counts(live)})
    updated_at = document.get("updated_at")
    if live and live.get("updated_at") and (updated_at is None or live["updated_at"] > updated_at):
        updated_at = live["updated_at"]
    savings = None
    if progress.bytes_in:
        savings = round(100.0 * (1 - progress.bytes_out / progress.bytes_in), 2)
    view: dict[str, Any] = {
        "request_id": document["_id"],
        "status": document["status"],
        "created_at": _iso(document.get("created_at")),
        "updated_at": _iso(updated_at),
        "progress": {
            "products_total": progress.products_total,
            "images_total": progress.images_total,
            "images_done": progress.images_done,
            "images_failed": progress.images_failed,
            "images_settled": progress.images_settled,
            "percent": progress.percent,
            "bytes_in": progress.bytes_in,
            "bytes_out": progress.bytes_out,
            "savings_percent": savings,
            "images_cached": progress.images_cached,
            "images_revalidated": progress.images_revalidated,
        },
    }
    if document.get("output_csv_url"):
        view["output_csv_url"] = document["output_csv_url"]
    if document["status"] == RequestStatus.FAILED.value:
        view["error"] = document.get("error") or "request failed"
    return view


def webhook_view(document: dict[str, Any], deliveries: dict[str, Any] | None) -> dict[str, Any] | None:
    """Webhook delivery history; the URL is reduced to scheme and host so tokens in it never leak."""
    url = document.get("webhook_url")
    if not url:
        return None
    parts = urlsplit(url)
    deliveries = deliveries or {}
    return {
        "target": f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}",
        "webhook_id": f"msg_{document['_id']}",
        "state": deliveries.get("state", "pending"),
        "attempts": [{**attempt, "at": _iso(attempt.get("at"))} for attempt in deliveries.get("attempts", [])],
    }


def product_view(document: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """A product with one output slot per input URL, filled from the aggregator's per-image results."""
    count = len(document["input_image_urls"])
    outputs: list[str | None] = [None] * count
    errors: list[str | None] = [None] * count
    cache: list[str | None] = [None] * count
    settled = 0
    for result in results:
        index = result["index"]
        if 0 <= index < count:
            outputs[index] = result.get("output_url")
            errors[index] = result.get("error")
            cache[index] = result.get("cache") if result.get("cached") else None
            settled += 1
    return {
        "row": document["row"],
        "serial_number": document["serial_number"],
        "product_name": document["product_name"],
        "extra": document.get("extra", {}),
        "input_image_urls": document["input_image_urls"],
        "output_image_urls": outputs,
        "image_errors": errors,
        # per slot: how its output was reused without a codec run ("revalidated", "same_bytes"), None when made
        "image_cache": cache,
        "pending": count - settled,
    }
