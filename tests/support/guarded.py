"""Real compressor and notifier processes of this checkout with the SSRF guard ON, beside the running stack.

The stack runs with ``PIXPRESS_ALLOW_PRIVATE_URLS=true`` (its tests serve images from 127.0.0.1), so the
guard's behaviour in the services is tested on processes started here: the same programs and the stack's
servers, but a RabbitMQ vhost and a database of their own, so nothing they consume or write mixes with the
stack's traffic. Tests publish messages into that vhost and read what the services publish back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from shared.messages import Message, RoutingKey
from testkit.stack import REPO, STATE, create_vhost, delete_vhost, service_env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class GuardedServices:
    vhost: str
    database: str
    amqp_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    async def publish(self, routing_key: RoutingKey, message: Message) -> None:
        await self.publish_raw(routing_key, message.model_dump_json().encode())

    async def publish_raw(self, routing_key: RoutingKey, body: bytes) -> None:
        """Any bytes, as a producer of another version (or a broken one) might send them."""
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("pixpress")
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=routing_key.value
            )

    async def take(self, queue: str, timeout: float = 30.0) -> bytes:
        """The next message in ``queue`` (acknowledged), waiting up to ``timeout`` seconds."""
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.get_queue(queue)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                message = await declared.get(no_ack=True, fail=False)
                if message is not None:
                    return message.body
                await asyncio.sleep(0.1)
        raise AssertionError(f"nothing arrived in {queue} within {timeout}s")

    async def count(self, queue: str) -> int:
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0

    def log(self, name: str) -> str:
        return (STATE / f"guarded-{name}.log").read_text(errors="replace")


def _spawn(name: str, program: str, env: dict[str, str]) -> subprocess.Popen:
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / f"guarded-{name}.log").open("wb") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / program)], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )


async def _wait_healthy(http: aiohttp.ClientSession, process: subprocess.Popen, port: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while loop.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"guarded {name} exited; see {STATE / f'guarded-{name}.log'}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{port}/healthz") as answer:
                if answer.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise AssertionError(f"guarded {name} not healthy on port {port}")


@asynccontextmanager
async def guarded_services(*programs: str, **extra_env: str) -> AsyncIterator[GuardedServices]:
    """Start ``programs`` (e.g. ``"compressor"``, ``"notifier"``) with the guard on; stop and clean up after."""
    tag = uuid.uuid4().hex[:8]
    settings = service_env()
    amqp = settings.get("PIXPRESS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/").rstrip("/")
    services = GuardedServices(
        vhost=f"pixpress-guarded-{tag}", database=f"pixpress_guarded_{tag}", amqp_url=f"{amqp}/pixpress-guarded-{tag}"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIXPRESS_")}
    async with aiohttp.ClientSession() as http:
        await create_vhost(http, services.vhost)
        try:
            for program in programs:
                port = _free_port()
                env = {
                    **base,
                    **settings,
                    "PIXPRESS_AMQP_URL": services.amqp_url,
                    "PIXPRESS_MONGO_DB": services.database,
                    "PIXPRESS_ALLOW_PRIVATE_URLS": "false",
                    "PIXPRESS_HEALTH_PORT": str(port),
                    "PYTHONUNBUFFERED": "1",
                    **extra_env,
                }
                process = _spawn(program, f"pixpress-{program}", env)
                services.processes[program] = process
                await _wait_healthy(http, process, port, program)
            yield services
        finally:
            for process in services.processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in services.processes.values():
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
            await delete_vhost(http, services.vhost)
            await asyncio.to_thread(_drop_database, settings, services.database)


def _drop_database(settings: dict[str, str], name: str) -> None:
    from pymongo import MongoClient

    client: MongoClient = MongoClient(settings.get("PIXPRESS_MONGO_URL", "mongodb://127.0.0.1:27017/"))
    try:
        client.drop_database(name)
    finally:
        client.close()


@asynccontextmanager
async def guarded_database(services: GuardedServices) -> AsyncIterator[AsyncDatabase]:
    """The database of ``services`` (their own, not the stack's), for staging requests and reading results."""
    client: AsyncMongoClient = AsyncMongoClient(service_env().get("PIXPRESS_MONGO_URL", "mongodb://127.0.0.1:27017/"))
    try:
        yield client[services.database]
    finally:
        await client.close()
