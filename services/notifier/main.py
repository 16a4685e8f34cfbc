"""Notifier process: webhook deliveries with a bounded number in flight."""

from __future__ import annotations

import asyncio

import aiohttp

from services.notifier.notifier import Notifier
from shared import metrics
from shared.broker import Broker
from shared.database import Database
from shared.logging import configure_logging
from shared.messages import Queue, RequestFinished
from shared.runtime import install_stop_signals, start_health_server
from shared.settings import get_settings
from shared.url_guard import guarded_connector

WEBHOOK_PREFETCH = 16


async def run() -> None:
    settings = get_settings()
    log = configure_logging("notifier", settings.log_level)
    metrics.register("notifier")
    stop = install_stop_signals()
    db = Database(settings)
    broker = Broker(settings.amqp_url.get_secret_value(), settings.exchange)
    await db.connect()
    await broker.connect()
    timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout, sock_connect=settings.connect_timeout)
    connector = guarded_connector(settings.allow_private_urls)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        notifier = Notifier(settings, db, broker, session)

        async def check() -> dict[str, bool]:
            return {"broker": broker.connected, "database": await db.healthy()}

        health = await start_health_server(check, settings.health_host, settings.health_port)
        await broker.consume(Queue.WEBHOOKS, RequestFinished, notifier.handle, WEBHOOK_PREFETCH)
        log.info("notifier_started", signing=notifier.secret is not None)
        await stop.wait()
        log.info("notifier_stopping")
        await broker.stop_consuming()
        await broker.close()
        if health is not None:
            await health.cleanup()
    await db.close()
    log.info("notifier_stopped")


def main() -> None:
    asyncio.run(run())
