"""The bulk fan-out publisher against the real RabbitMQ: every message arrives intact and persistent, and
every way the broker can refuse a batch surfaces as an error instead of a silent loss or a hang.

Each test works in its own virtual host, created and deleted through the management API, so nothing here
can touch the pipeline's queues.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage

from shared.broker import Broker
from shared.bulk_publisher import BulkPublisher, BulkPublishError
from shared.messages import ImageTask, Queue, RoutingKey
from testkit.stack import MANAGEMENT, MANAGEMENT_HEADERS, amqp_url

EXCHANGE = "bulk-test"


async def declare(vhost: str, queue: str, routing_key: str, queue_type: str = "quorum", **arguments: Any) -> None:
    connection = await aio_pika.connect(amqp_url(vhost))
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        declared = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": queue_type, **arguments})
        await declared.bind(exchange, routing_key)


async def drain(vhost: str, queue: str, expected: int, timeout: float = 30.0) -> list[AbstractIncomingMessage]:
    """Consume (and ack) until ``expected`` messages arrived, then make sure no extra one follows."""
    received: list[AbstractIncomingMessage] = []
    connection = await aio_pika.connect(amqp_url(vhost))
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        source = await channel.get_queue(queue)
        deadline = time.monotonic() + timeout
        async with source.iterator() as messages:
            while len(received) < expected + 1:
                remaining = deadline - time.monotonic() if len(received) < expected else 1.0
                try:
                    message = await asyncio.wait_for(messages.__anext__(), timeout=max(remaining, 0.1))
                except TimeoutError:
                    break
                await message.ack()
                received.append(message)
    return received


async def test_every_message_arrives_in_order_persistent_and_intact(vhost: str) -> None:
    await declare(vhost, "q", "image.todo")
    bodies = [json.dumps({"n": n, "url": f"http://example.com/{n}.jpg"}).encode() for n in range(5000)]
    publisher = await BulkPublisher.connect(amqp_url(vhost))
    try:
        assert await publisher.publish(EXCHANGE, "image.todo", bodies[:2000]) == 2000
        assert await publisher.publish(EXCHANGE, "image.todo", iter(bodies[2000:])) == 3000
        assert await publisher.publish(EXCHANGE, "image.todo", []) == 0
    finally:
        await publisher.close()
    received = await drain(vhost, "q", len(bodies))
    assert [message.body for message in received] == bodies
    assert {message.delivery_mode for message in received} == {aio_pika.DeliveryMode.PERSISTENT}
    assert {message.content_type for message in received} == {"application/json"}
    assert {message.routing_key for message in received} == {"image.todo"}


async def test_a_body_larger_than_a_frame_is_split_and_reassembled(vhost: str) -> None:
    await declare(vhost, "q", "big")
    big = bytes(range(256)) * 1500  # 384,000 bytes: three frames at RabbitMQ's default frame_max of 128 KiB
    bodies = [b"small", big, b"after"]
    publisher = await BulkPublisher.connect(amqp_url(vhost))
    try:
        await publisher.publish(EXCHANGE, "big", bodies)
    finally:
        await publisher.close()
    assert [message.body for message in await drain(vhost, "q", 3)] == bodies


async def test_messages_the_queue_refuses_are_reported_as_a_failed_batch(vhost: str) -> None:
    # a classic queue: a quorum queue applies its length limit only approximately (after the leader caught up)
    await declare(vhost, "q", "full", "classic", **{"x-max-length": 10, "x-overflow": "reject-publish"})
    publisher = await BulkPublisher.connect(amqp_url(vhost))
    try:
        with pytest.raises(BulkPublishError, match=r"refused 15 of 25"):
            await publisher.publish(EXCHANGE, "full", [b"%d" % n for n in range(25)])
        # a nack is the broker's answer, not a broken connection: the publisher still works
        assert publisher.usable
    finally:
        await publisher.close()
    assert len(await drain(vhost, "q", 10)) == 10


async def test_an_unroutable_batch_is_an_error_not_a_silent_drop(vhost: str) -> None:
    await declare(vhost, "q", "bound")
    publisher = await BulkPublisher.connect(amqp_url(vhost))
    try:
        with pytest.raises(BulkPublishError, match=r"2 messages unroutable: 312 NO_ROUTE"):
            await publisher.publish(EXCHANGE, "nobody.listens", [b"a", b"b"])
        with pytest.raises(BulkPublishError, match=r"NOT_FOUND"):
            await publisher.publish("no-such-exchange", "bound", [b"a"])
        assert not publisher.usable  # a channel error closes the channel: this publisher is finished
    finally:
        await publisher.close()


async def test_bad_credentials_and_unknown_vhost_are_refused_with_the_brokers_reason(vhost: str) -> None:
    with pytest.raises(BulkPublishError, match=r"ACCESS_REFUSED"):
        await BulkPublisher.connect(amqp_url(vhost, password="wrong"))
    with pytest.raises(BulkPublishError, match=r"NOT_ALLOWED"):
        await BulkPublisher.connect(amqp_url(f"{vhost}-missing"))
    with pytest.raises(ValueError, match=r"scheme"):
        await BulkPublisher.connect("http://127.0.0.1:5672/")


async def close_connections(vhost: str, connection_name: str) -> int:
    """Force-close, from the broker side, every connection in ``vhost`` that carries ``connection_name``."""
    closed = 0
    async with aiohttp.ClientSession(headers=MANAGEMENT_HEADERS) as http:
        deadline = time.monotonic() + 15
        while not closed and time.monotonic() < deadline:
            async with http.get(f"{MANAGEMENT}/vhosts/{vhost}/connections") as response:
                connections = await response.json()
            for connection in connections:
                if connection.get("client_properties", {}).get("connection_name") == connection_name:
                    async with http.delete(f"{MANAGEMENT}/connections/{connection['name']}") as response:
                        assert response.status == 204
                    closed += 1
            if not closed:
                await asyncio.sleep(0.5)
    return closed


async def until_unusable(publisher: BulkPublisher, timeout: float = 10.0) -> None:
    """Until the publisher has read the broker's Connection.Close (the management API answers before it is sent)."""
    deadline = time.monotonic() + timeout
    while publisher.usable:
        assert time.monotonic() < deadline, f"the publisher never noticed the closed connection in {timeout}s"
        await asyncio.sleep(0.05)


async def test_a_connection_closed_by_the_broker_fails_the_batch_instead_of_hanging(vhost: str) -> None:
    await declare(vhost, "q", "k")
    publisher = await BulkPublisher.connect(amqp_url(vhost), name="doomed")
    try:
        assert await publisher.publish(EXCHANGE, "k", [b"before"]) == 1
        assert await close_connections(vhost, "doomed") == 1
        await until_unusable(publisher)
        with pytest.raises(BulkPublishError, match=r"CONNECTION_FORCED"):
            await asyncio.wait_for(publisher.publish(EXCHANGE, "k", [b"after"]), timeout=10)
    finally:
        await publisher.close()
    assert [message.body for message in await drain(vhost, "q", 1)] == [b"before"]


async def test_broker_replaces_a_dead_bulk_connection_before_the_next_batch(vhost: str) -> None:
    broker = Broker(amqp_url(vhost))
    await broker.connect(wait_seconds=10)
    try:
        first = [ImageTask(request_id="r1", product_id="r1:1", row=1, index=0, url="http://example.com/a.jpg")]
        assert await broker.publish_many(RoutingKey.IMAGE_TODO, first) == 1
        dead = broker._bulk  # the connection the next batch must not use
        assert dead is not None
        assert await close_connections(vhost, "pixpress-bulk") == 1
        await until_unusable(dead)
        second = [ImageTask(request_id="r1", product_id="r1:2", row=2, index=0, url="http://example.com/b.jpg")]
        assert await broker.publish_many(RoutingKey.IMAGE_TODO, second * 4500, batch=2000) == 4500
        assert broker._bulk is not dead and broker._bulk is not None and broker._bulk.usable
    finally:
        await broker.close()
    received = await drain(vhost, Queue.IMAGES.value, 4501)
    assert len(received) == 4501
    assert [ImageTask.model_validate_json(message.body).row for message in received[:2]] == [1, 2]


async def connection_heartbeat(vhost: str, connection_name: str) -> int | None:
    """The heartbeat timeout RabbitMQ agreed on for the connection named ``connection_name`` (management API)."""
    async with aiohttp.ClientSession(headers=MANAGEMENT_HEADERS) as http:
        for _ in range(30):  # the management API sees a new connection after its next stats emission
            async with http.get(f"{MANAGEMENT}/vhosts/{vhost}/connections") as response:
                for connection in await response.json():
                    if connection.get("client_properties", {}).get("connection_name") == connection_name:
                        return connection["timeout"]
            await asyncio.sleep(0.5)
    return None


async def test_an_idle_connection_survives_by_answering_the_brokers_heartbeats(vhost: str) -> None:
    # a 1 s heartbeat (from the URL, as aio-pika reads it): RabbitMQ drops a peer that stays silent for two
    # heartbeat intervals, so a publisher that did not answer would be gone long before the 5 s idle ends
    await declare(vhost, "q", "k")
    publisher = await BulkPublisher.connect(amqp_url(vhost) + "?heartbeat=1", name="idle")
    try:
        assert await connection_heartbeat(vhost, "idle") == 1
        await asyncio.sleep(5)
        assert publisher.usable
        assert await publisher.publish(EXCHANGE, "k", [b"after a quiet while"]) == 1
    finally:
        await publisher.close()
    assert [message.body for message in await drain(vhost, "q", 1)] == [b"after a quiet while"]
    with pytest.raises(ValueError, match=r"heartbeat"):
        await BulkPublisher.connect(amqp_url(vhost) + "?heartbeat=soon")
