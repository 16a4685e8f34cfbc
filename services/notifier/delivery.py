"""One webhook POST: signed per Standard Webhooks, guarded against SSRF, classified and timed."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

from shared.messages import RequestFinished
from shared.reasons import describe_client_error, short_reason
from shared.url_guard import BlockedAddressError, check_url, refusal_behind


@dataclass(frozen=True)
class Attempt:
    """What the notifier records for each try; ``ok`` is a 2xx answer. ``refused``: the SSRF guard refused the
    URL, which no later attempt can change, so it is not retried."""

    number: int
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int
    refused: bool = False

    def as_document(self) -> dict[str, object]:
        return {
            "attempt": self.number,
            "at": self.at,
            "ok": self.ok,
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "refused": self.refused,
        }


def webhook_id(request_id: str) -> str:
    """Stable across retries and redeliveries so receivers can deduplicate."""
    return f"msg_{request_id}"


def webhook_body(event: RequestFinished) -> bytes:
    progress = event.progress
    payload = {
        "type": "request.finished",
        "request_id": event.request_id,
        "status": event.status.value,
        "output_csv_url": event.output_csv_url,
        "error": event.error,
        "progress": {
            "products_total": progress.products_total,
            "images_total": progress.images_total,
            "images_done": progress.images_done,
            "images_failed": progress.images_failed,
            "percent": progress.percent,
            "bytes_in": progress.bytes_in,
            "bytes_out": progress.bytes_out,
            "images_cached": progress.images_cached,
            "images_revalidated": progress.images_revalidated,
        },
        "finished_at": event.finished_at.isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signed_headers(secret: str | None, message_id: str, sent_at: datetime, body: bytes) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "pixpress-webhooks/0.1",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
    }
    if secret:
        headers["webhook-signature"] = Webhook(secret).sign(message_id, sent_at, body.decode())
    return headers


async def post_webhook(
    session: aiohttp.ClientSession,
    url: str,
    event: RequestFinished,
    *,
    secret: str | None,
    allow_private: bool,
    sent_at: datetime,
) -> Attempt:
    body = webhook_body(event)
    headers = signed_headers(secret, webhook_id(event.request_id), sent_at, body)
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    refusal: BlockedAddressError | None = None
    try:
        target = check_url(url, allow_private)  # the URL object aiohttp then connects with
        async with session.post(target, data=body, headers=headers, allow_redirects=False) as response:
            status = response.status
            await response.content.read(64 * 1024)  # drain a little; never trust a receiver to be small
    except BlockedAddressError as exc:
        refusal = exc
    except TimeoutError:
        error = "timed out"
    except aiohttp.ClientError as exc:
        refusal = refusal_behind(exc)
        if refusal is None:
            error = describe_client_error(exc, "webhook receiver")
    if refusal is not None:
        error = f"refused: {refusal}"
    duration_ms = int((time.monotonic() - started) * 1000)
    ok = status is not None and 200 <= status < 300
    if status is not None and not ok:
        error = f"HTTP {status}"
    return Attempt(
        event.attempt,
        sent_at,
        ok,
        status,
        None if error is None else short_reason(error),
        duration_ms,
        refused=refusal is not None,
    )
