"""Periodic recovery so that no request stays unfinished after a crash anywhere.

* ``outbox_pending`` left set (crash after the final status, before the event was confirmed): republish.
* Processing with the fan-out complete: run the exact completion check (one indexed probe per open request;
  covers a counter increment lost between the slot write and the counter write).
* Processing, fan-out complete, images still pending and no result for ``stuck_after`` seconds: publish the
  unsettled images' tasks again (covers a task or result lost to a dead-letter queue after an outage longer
  than the delivery limit spans). Output keys are deterministic and slots idempotent, so a task that was only
  slow costs a duplicate compression, nothing more.
* Queued, or Processing with the fan-out incomplete, and quiet: republish ``request.accepted``; the fan-out
  resumes from its cursor (covers ingest dying between storing the request and publishing, or mid fan-out).
* With ``PIXPRESS_RETENTION_DAYS`` set: one bounded retention pass (services/aggregator/retention.py).
Every action is idempotent, so several aggregator replicas may sweep at once.
Each query here is served by an index (``_id``, ``outbox_pending``, ``status``; tests/test_ferretdb_pushdown.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import structlog

from services.aggregator.finisher import Finisher
from services.aggregator.retention import Retention
from shared import metrics
from shared.broker import Broker
from shared.database import Database
from shared.lifecycle import OPEN_REQUESTS, OUTBOX_PENDING, progress_of
from shared.messages import ImageTask, RequestAccepted, RoutingKey
from shared.timeutil import utcnow

log = structlog.get_logger()


class Sweeper:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        finisher: Finisher,
        interval: float,
        stuck_after: float,
        retention: Retention | None = None,
    ):
        self.db = db
        self.broker = broker
        self.finisher = finisher
        self.interval = interval
        self.stuck_after = timedelta(seconds=stuck_after)
        self.retention = retention

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def sweep_once(self) -> None:
        async for request in self.db.requests.find(OUTBOX_PENDING, projection={"_id": 1}):
            log.info("sweep_republish_outbox", request_id=request["_id"])
            await self.finisher.publish_outbox(request["_id"])
        quiet_since = utcnow() - self.stuck_after
        open_requests = self.db.requests.find(
            OPEN_REQUESTS,
            projection={"_id": 1, "fanout_complete": 1, "updated_at": 1, "images_total": 1, "created_at": 1},
        )
        seen: list[datetime] = []  # created_at of every open request, for the open-requests gauges
        async for request in open_requests:
            request_id = request["_id"]
            seen.append(request["created_at"])
            if request.get("fanout_complete"):
                await self._check_complete(request_id, request.get("images_total", 0), quiet_since)
                continue
            if request["updated_at"] >= quiet_since:
                continue  # the fan-out is moving
            log.info("sweep_restart_fanout", request_id=request_id)
            await self.db.requests.update_one({"_id": request_id}, {"$set": {"updated_at": utcnow()}})
            await self.broker.publish(
                RoutingKey.REQUEST_ACCEPTED, RequestAccepted(request_id=request_id), message_id=request_id
            )
        metrics.open_requests_seen(len(seen), min(seen, default=None), utcnow())
        if self.retention is not None:
            await self.retention.run_once()

    async def _check_complete(self, request_id: str, images_total: int, quiet_since: datetime) -> None:
        """Probe products only when the counters say done or the request went quiet.

        The probe is an indexed count, but it reads every result of the request (FerretDB counts in Go what the
        index selected), so for a large request it is too dear to run for every open request on every sweep.
        """
        progress = await self.db.progress.find_one({"_id": request_id}) or {}
        settled = progress_of(progress).images_settled
        last = progress.get("updated_at")
        quiet = last is None or last < quiet_since
        if settled < images_total and not quiet:
            return
        if await self.finisher.finish_if_complete(request_id, counted_complete=settled >= images_total):
            log.info("sweep_finished_request", request_id=request_id)
        elif quiet:
            await self._resume_if_quiet(request_id, quiet_since)

    async def _resume_if_quiet(self, request_id: str, quiet_since: datetime) -> None:
        async with self.finisher.locks.hold(request_id):
            progress = await self.db.progress.find_one({"_id": request_id}) or {}
            last = progress.get("updated_at")
            if last is not None and last >= quiet_since:
                return
            if last is None:
                request = await self.db.requests.find_one({"_id": request_id}, projection={"updated_at": 1})
                if request is None or request["updated_at"] >= quiet_since:
                    return
            done = {
                (result["row"], result["index"])
                async for result in self.db.results.find({"request_id": request_id}, projection={"row": 1, "index": 1})
            }
            tasks = [
                ImageTask(request_id=request_id, product_id=product["_id"], row=product["row"], index=index, url=url)
                async for product in self.db.products.find({"request_id": request_id})
                for index, url in enumerate(product["input_image_urls"])
                if (product["row"], index) not in done
            ]
            await self.broker.publish_many(RoutingKey.IMAGE_TODO, tasks)
            await self.db.progress.update_one({"_id": request_id}, {"$set": {"updated_at": utcnow()}}, upsert=True)
            log.warning("sweep_resumed_stuck_images", request_id=request_id, images=len(tasks))
