"""Shapes of the request and product documents, and their public views (models of shared/api_models.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from services.ingest.csv_parser import ProductRow
from shared.api_models import (
    ImageState,
    ImageView,
    ProductView,
    ProgressView,
    RequestDetail,
    StatusView,
    WebhookAttempt,
    WebhookState,
    WebhookView,
    webhook_id,
)
from shared.cache import CacheKind
from shared.database import product_id
from shared.lifecycle import is_open, progress_of
from shared.messages import RequestStatus
from shared.request_hours import created_fields
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
        **created_fields(now),
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


def _counts(live: dict[str, Any]) -> dict[str, Any]:
    keys = ("images_done", "images_failed", "bytes_in", "bytes_out", "images_cached", "images_revalidated")
    return {key: live.get(key, 0) for key in keys}


def _status_fields(document: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    final = not is_open(document["status"])
    progress = progress_of(document if final or not live else {**document, **_counts(live)})
    updated_at = document["updated_at"]
    if live and live.get("updated_at") and live["updated_at"] > updated_at:
        updated_at = live["updated_at"]
    failed = document["status"] == RequestStatus.FAILED.value
    return {
        "request_id": document["_id"],
        "status": document["status"],
        "created_at": document["created_at"],
        "updated_at": updated_at,
        "progress": ProgressView.of(progress),
        "output_csv_url": document.get("output_csv_url") or None,
        "error": (document.get("error") or "request failed") if failed else None,
    }


def status_view(document: dict[str, Any], live: dict[str, Any] | None) -> StatusView:
    """``live`` is the aggregator's progress document; once the request is final its exact counts are in the
    request itself."""
    return StatusView(**_status_fields(document, live))


def request_detail(
    document: dict[str, Any], live: dict[str, Any] | None, deliveries: dict[str, Any] | None
) -> RequestDetail:
    return RequestDetail(**_status_fields(document, live), webhook=webhook_view(document, deliveries))


def webhook_view(document: dict[str, Any], deliveries: dict[str, Any] | None) -> WebhookView | None:
    """Webhook delivery history; the URL is reduced to scheme and host so tokens in it never leak."""
    url = document.get("webhook_url")
    if not url:
        return None
    parts = urlsplit(url)
    deliveries = deliveries or {}
    return WebhookView(
        target=f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}",
        webhook_id=webhook_id(document["_id"]),
        state=deliveries.get("state", WebhookState.PENDING),
        attempts=[WebhookAttempt.from_document(attempt) for attempt in deliveries.get("attempts", [])],
    )


def product_view(document: dict[str, Any], results: list[dict[str, Any]]) -> ProductView:
    """A product with one output slot per input URL, filled from the aggregator's per-image results."""
    count = len(document["input_image_urls"])
    outputs: list[str | None] = [None] * count
    errors: list[str | None] = [None] * count
    cache: list[CacheKind | None] = [None] * count
    by_index: dict[int, dict[str, Any]] = {}
    for result in results:
        index = result["index"]
        if 0 <= index < count:
            outputs[index] = result.get("output_url")
            errors[index] = result.get("error")
            cache[index] = cache_kind(result)
            by_index[index] = result
    images = [
        image_view(document["request_id"], document["row"], index, url, by_index.get(index))
        for index, url in enumerate(document["input_image_urls"])
    ]
    return ProductView(
        row=document["row"],
        serial_number=document["serial_number"],
        product_name=document["product_name"],
        extra=document.get("extra", {}),
        input_image_urls=document["input_image_urls"],
        output_image_urls=outputs,
        image_errors=errors,
        image_cache=cache,
        pending=count - len(by_index),
        images=images,
    )


def cache_kind(result: dict[str, Any]) -> CacheKind | None:
    """How a settled image's output was reused, None when it was compressed for its request (or failed)."""
    return CacheKind(result["cache"]) if result.get("cached") else None


def thumbnail_path(request_id: str, row: int, index: int, version: str) -> str:
    return f"/requests/{request_id}/images/{row}/{index}/thumb?v={version}"


def image_view(request_id: str, row: int, index: int, url: str, result: dict[str, Any] | None) -> ImageView:
    """What the console shows of one image; thumbnails of the compressed version only once there is one."""
    found = result or {}
    state = ImageState.PENDING if result is None else ImageState.DONE if found.get("ok") else ImageState.FAILED
    done = state is ImageState.DONE
    thumbnails = {"original": thumbnail_path(request_id, row, index, "original")}
    if done:
        thumbnails["compressed"] = thumbnail_path(request_id, row, index, "compressed")
    return ImageView(
        index=index,
        input_url=url,
        state=state,
        output_url=found.get("output_url") if done else None,
        error=(found.get("error") or "failed") if state is ImageState.FAILED else None,
        format_in=found.get("format_in") if done else None,
        format_out=found.get("format_out") if done else None,
        bytes_in=found.get("bytes_in") if done else None,
        bytes_out=found.get("bytes_out") if done else None,
        cache=cache_kind(found) if done else None,
        thumbnails=thumbnails,
    )
