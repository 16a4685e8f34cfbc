"""Fixtures for tests that talk to the running stack (``make test`` starts it) and local fake servers.

Tiers: a module marked ``pure`` needs no server of the stack (it may start its own local HTTP servers) and is
what ``make test-fast`` runs; every other test needs the stack. A pure test that asks for one of the stack's
fixtures is refused at collection.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from testkit.stack import create_vhost, delete_vhost, servers, service_settings, services
from tests.support.client import API
from tests.support.servers import ImageHost, WebhookReceiver

STACK_FIXTURES = frozenset({"stack", "stack_api", "vhost", "mongo"})
PURE_MARK = "pytestmark = pytest.mark.pure"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``-m pure``, a test module not marked pure is not even imported: some reach the running API at import
    (schemathesis loads the served OpenAPI document then), which would cost the fast tier seconds of waiting."""
    if config.getoption("markexpr") != "pure" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    return PURE_MARK not in collection_path.read_text(encoding="utf-8")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("pure") is None:
            continue
        needs = STACK_FIXTURES & set(getattr(item, "fixturenames", ()))
        if needs or item.get_closest_marker("faults"):
            raise pytest.UsageError(f"{item.nodeid} is marked pure but needs the stack ({', '.join(sorted(needs))})")


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def stack_healthy(http: aiohttp.ClientSession) -> str:
    """Until the API's /healthz answers 200 (it checks RabbitMQ, the database and MinIO), at most a minute."""
    last_error = ""
    for _ in range(60):
        try:
            async with http.get(f"{API}/healthz") as response:
                if response.status == 200:
                    return API
                last_error = await response.text()
        except aiohttp.ClientError as exc:
            last_error = str(exc)
        await asyncio.sleep(1)
    pytest.fail(f"pixpress API at {API} is not healthy (run `make up`): {last_error}")


@pytest.fixture(scope="session")
async def stack(http: aiohttp.ClientSession) -> str:
    """The API must answer; the tests never fake it. ``make test`` brings the stack up first."""
    return await stack_healthy(http)


@pytest.fixture
async def image_host() -> AsyncIterator[ImageHost]:
    host = ImageHost()
    await host.start()
    yield host
    await host.stop()


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def stack_api(stack: str, http: aiohttp.ClientSession) -> AsyncIterator[str]:
    """The stack, checked healthy again after a test that broke part of it (so the next test starts clean)."""
    yield stack
    from tests.support import stack as control

    expected = {*servers(), *services()}
    running: set[str] = set()
    for _ in range(120):
        running = set(control.processes())
        if expected <= running:
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail(f"after this test, {sorted(expected - running)} did not run again within 60 s")
    await control.wait_compressors_running()
    await stack_healthy(http)


@pytest.fixture
async def vhost() -> AsyncIterator[str]:
    """A RabbitMQ virtual host of its own (created and deleted through the management API), for tests that
    exercise the broker code without touching the pipeline's queues."""
    name = f"pixpress-test-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        await create_vhost(http, name)
        try:
            yield name
        finally:
            await delete_vhost(http, name)


@pytest_asyncio.fixture(scope="module")
async def mongo() -> AsyncIterator[Any]:
    """The stack's database, for tests that stage documents or read what the services wrote."""
    settings = service_settings()
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo_url.get_secret_value(), serverSelectionTimeoutMS=5000)
    yield client[settings.mongo_db]
    await client.close()
