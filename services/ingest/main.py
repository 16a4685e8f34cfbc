"""Ingest process: the HTTP API plus the fan-out consumer (prefetch 1, so one big CSV at a time per process)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from services.ingest.api import build_app
from services.ingest.backfill import index_existing_requests
from services.ingest.csv_parser import Limits
from services.ingest.fanout import FanOut
from services.ingest.upload import UploadHandler
from shared import metrics
from shared.broker import Broker
from shared.database import Database
from shared.logging import configure_logging
from shared.messages import Queue, RequestAccepted
from shared.runtime import install_stop_signals
from shared.settings import get_settings
from shared.storage import Storage


async def run() -> None:
    settings = get_settings()
    log = configure_logging("ingest", settings.log_level)
    metrics.register("ingest")
    stop = install_stop_signals()
    db = Database(settings)
    storage = Storage(settings)
    broker = Broker(settings.amqp_url.get_secret_value(), settings.exchange)
    await db.connect()
    await index_existing_requests(db)  # once per database; GET /requests needs it
    await storage.ensure_bucket()
    await broker.connect()

    async def check() -> dict[str, bool]:
        return {"broker": broker.connected, "database": await db.healthy(), "storage": await storage.healthy()}

    upload = UploadHandler(settings, db, storage, broker)
    app = build_app(settings, db, upload, check)
    # aiohttp closes a connection still short of complete headers when its keep-alive timer fires, so that timer
    # is the header read bound; the upload handler bounds the body itself (PIXPRESS_API_BODY_TIMEOUT)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=settings.api_header_timeout)
    await runner.setup()
    await web.TCPSite(runner, settings.api_host, settings.api_port).start()
    # the fan-out re-reads files that passed validation; the compressor guards every URL again when it fetches,
    # so a file accepted before PIXPRESS_ALLOW_PRIVATE_URLS changed still fans out (its images then fail)
    limits = Limits(settings.max_rows, settings.max_urls_per_row, settings.max_url_length, allow_private_urls=True)
    fanout = FanOut(db, storage, broker, limits, settings.fanout_batch, cache=settings.cache)
    await broker.consume(Queue.FANOUT, RequestAccepted, fanout.handle, prefetch=1)
    log.info("ingest_started", host=settings.api_host, port=settings.api_port)
    await stop.wait()
    log.info("ingest_stopping")
    await broker.stop_consuming(grace_seconds=60)
    await runner.cleanup()
    await broker.close()
    await db.close()
    log.info("ingest_stopped")


def main() -> None:
    asyncio.run(run())
