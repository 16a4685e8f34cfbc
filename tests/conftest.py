"""Fixtures for tests that talk to the running stack (``make test`` starts it) and local fake servers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from testkit.stack import create_vhost, delete_vhost
from tests.support.client import API
from tests.support.servers import ImageHost, WebhookReceiver


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture(scope="session")
async def stack(http: aiohttp.ClientSession) -> str:
    """The API must answer; the tests never fake it. ``make test`` brings the stack up first."""
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
async def stack_api(stack: str) -> AsyncIterator[str]:
    """The stack, checked healthy again after a test that broke part of it (so the next test starts clean)."""
    yield stack
    from tests.support import stack as control

    expected = {"ingest", "aggregator", "notifier", "rabbitmq", "ferretdb", "minio"}
    for _ in range(120):
        if expected <= set(control.processes()):
            break
        await asyncio.sleep(0.5)


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
