"""Aggregator process: result consumer plus the recovery sweeper."""

from __future__ import annotations

import asyncio

from services.aggregator.finisher import Finisher
from services.aggregator.retention import Retention
from services.aggregator.sweeper import Sweeper
from services.aggregator.tracker import ResultTracker
from shared import metrics
from shared.broker import Broker
from shared.database import Database
from shared.logging import configure_logging
from shared.messages import ImageResult, ImageResults, Queue
from shared.runtime import install_stop_signals, start_health_server
from shared.settings import get_settings
from shared.storage import Storage


async def run() -> None:
    settings = get_settings()
    log = configure_logging("aggregator", settings.log_level)
    metrics.register("aggregator")
    stop = install_stop_signals()
    db = Database(settings)
    storage = Storage(settings)
    broker = Broker(settings.amqp_url.get_secret_value(), settings.exchange)
    await db.connect()
    await storage.ensure_bucket()
    await broker.connect()
    finisher = Finisher(db, storage, broker)
    tracker = ResultTracker(db, finisher, batch_size=settings.aggregator_prefetch)
    retention = Retention(db, storage, settings.retention_days) if settings.retention_days else None
    sweeper = Sweeper(db, broker, finisher, settings.sweep_interval, settings.stuck_after, retention)

    async def check() -> dict[str, bool]:
        return {"broker": broker.connected, "database": await db.healthy(), "storage": await storage.healthy()}

    health = await start_health_server(check, settings.health_host, settings.health_port)
    await broker.consume(Queue.RESULTS, ImageResult, tracker.handle, settings.aggregator_prefetch)
    # results several to a message: about as many results in flight as from the single-result queue
    batch_prefetch = max(1, settings.aggregator_prefetch // settings.result_batch)
    await broker.consume(Queue.RESULTS_BATCH, ImageResults, tracker.handle_batch, batch_prefetch)
    sweep_task = asyncio.create_task(sweeper.run(stop))
    log.info("aggregator_started", retention_days=settings.retention_days)
    await stop.wait()
    log.info("aggregator_stopping")
    await broker.stop_consuming()
    await sweep_task
    await broker.close()
    await db.close()
    if health is not None:
        await health.cleanup()
    log.info("aggregator_stopped")


def main() -> None:
    asyncio.run(run())
