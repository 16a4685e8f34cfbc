"""Consumes completion events and delivers webhooks; retries wait in broker delay queues, not in memory.

Each attempt is appended to the request's document in ``webhooks`` (owned by the notifier alone) so the API
can show it. After the last attempt the event is rejected into ``notifier.webhooks.dlq`` and the delivery
``state`` becomes ``dead``; the request itself stays Completed. Events for one request are handled one at a
time, so a redelivered duplicate sees ``delivered`` and sends nothing.
"""

from __future__ import annotations

import aiohttp
import structlog
from aio_pika.abc import AbstractIncomingMessage

from services.notifier.delivery import post_webhook
from shared import metrics
from shared.api_models import WebhookState
from shared.broker import Broker, PoisonMessage
from shared.database import Database
from shared.locks import KeyedLocks
from shared.messages import RequestFinished, RoutingKey
from shared.settings import Settings
from shared.timeutil import utcnow

log = structlog.get_logger()


class Notifier:
    def __init__(self, settings: Settings, db: Database, broker: Broker, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.db = db
        self.broker = broker
        self.session = session
        self.secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        self.locks = KeyedLocks()

    def delay_ms(self, attempt: int) -> int:
        delays = self.settings.webhook_retry_delays_ms
        return delays[min(attempt - 1, len(delays) - 1)]

    async def handle(self, event: RequestFinished, _message: AbstractIncomingMessage) -> None:
        async with self.locks.hold(event.request_id):
            await self._deliver(event)

    async def _deliver(self, event: RequestFinished) -> None:
        request = await self.db.requests.find_one({"_id": event.request_id}, projection={"webhook_url": 1})
        if request is None:
            log.warning("webhook_unknown_request")
            return
        url = request.get("webhook_url")
        if not url:
            return
        deliveries = await self.db.webhooks.find_one({"_id": event.request_id}, projection={"state": 1})
        if deliveries is not None and deliveries.get("state") in (WebhookState.DELIVERED, WebhookState.DEAD):
            log.info("webhook_already_settled", state=deliveries["state"])
            return
        attempt = await post_webhook(
            self.session,
            url,
            event,
            secret=self.secret,
            allow_private=self.settings.allow_private_urls,
            sent_at=utcnow(),
        )
        # a URL the SSRF guard refuses stays refused: dead at once, with its reason, instead of retried
        last = event.attempt >= self.settings.webhook_max_attempts or attempt.refused
        state = WebhookState.DELIVERED if attempt.ok else (WebhookState.DEAD if last else WebhookState.RETRYING)
        await self.db.webhooks.update_one(
            {"_id": event.request_id},
            {"$push": {"attempts": attempt.model_dump()}, "$set": {"state": state.value}},
            upsert=True,
        )
        metrics.webhook_attempted(state)
        log.info(
            "webhook_attempt",
            attempt=event.attempt,
            ok=attempt.ok,
            status_code=attempt.status_code,
            error=attempt.error,
            duration_ms=attempt.duration_ms,
        )
        if attempt.ok:
            return
        if last:
            raise PoisonMessage(f"webhook failed after {event.attempt} attempt(s): {attempt.error}")
        retry = event.model_copy(update={"attempt": event.attempt + 1})
        await self.broker.publish_delayed(RoutingKey.REQUEST_FINISHED, retry, self.delay_ms(event.attempt))
