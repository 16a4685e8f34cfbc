"""An ingest API app built in this process with settings of the test's choosing, on the stack's real servers.

For behaviour the running stack is not configured for (an API key, the SSRF guard on): the same
``build_app`` and ``UploadHandler`` the service runs, wired to the real MongoDB, MinIO and RabbitMQ and served
by aiohttp's TestServer over real HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp.test_utils import TestClient, TestServer

from services.ingest.api import build_app
from services.ingest.backfill import index_existing_requests
from services.ingest.upload import UploadHandler
from shared.broker import Broker
from shared.database import Database
from shared.settings import Settings
from shared.storage import Storage


@asynccontextmanager
async def serve_api(settings: Settings) -> AsyncIterator[TestClient]:
    db = Database(settings)
    storage = Storage(settings)
    broker = Broker(settings.amqp_url.get_secret_value(), settings.exchange)
    await db.connect(wait_seconds=30)
    await index_existing_requests(db)
    await storage.ensure_bucket(wait_seconds=30)
    await broker.connect(wait_seconds=30)

    async def check() -> dict[str, bool]:
        return {"broker": broker.connected, "database": await db.healthy(), "storage": await storage.healthy()}

    app = build_app(settings, db, UploadHandler(settings, db, storage, broker), check)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await broker.close()
        await db.close()
