"""One webhook POST: signed per Standard Webhooks, guarded against SSRF, classified and timed."""

from __future__ import annotations

import time
from datetime import datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

from shared.api_models import WebhookAttempt, WebhookPayload, json_bytes, webhook_id
from shared.messages import RequestFinished
from shared.reasons import describe_client_error, short_reason
from shared.url_guard import BlockedAddressError, check_url, refusal_behind


def webhook_body(event: RequestFinished) -> bytes:
    """The signed bytes: compact JSON of :class:`~shared.api_models.WebhookPayload`."""
    return json_bytes(WebhookPayload.of(event))


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
) -> WebhookAttempt:
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
    return WebhookAttempt(
        attempt=event.attempt,
        at=sent_at,
        ok=ok,
        status_code=status,
        error=None if error is None else short_reason(error),
        duration_ms=duration_ms,
        refused=refusal is not None,
    )
