"""The consumer side of shared.broker against the real RabbitMQ, in a vhost of its own: how a failing handler's
message comes back, and where messages that can never succeed end up."""

from __future__ import annotations

import asyncio
import itertools
import time

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shared.broker import DELIVERY_LIMIT, Broker, PoisonMessage, delivery_count
from shared.messages import ImageResult, Queue, RoutingKey
from testkit.stack import amqp_url


def result(row: int) -> ImageResult:
    return ImageResult(request_id="r", product_id=f"r:{row}", row=row, index=0, ok=True, output_url="http://x/y.jpg")


async def dead_letters(vhost: str, queue: Queue, timeout: float = 10.0) -> list[bytes]:
    connection = await aio_pika.connect(amqp_url(vhost))
    bodies: list[bytes] = []
    async with connection:
        channel = await connection.channel()
        dlq = await channel.get_queue(f"{queue.value}.dlq")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await dlq.get(no_ack=True, fail=False)
            if message is None:
                if bodies:
                    break
                await asyncio.sleep(0.2)
                continue
            bodies.append(message.body)
    return bodies


async def test_a_failing_handler_waits_longer_before_each_redelivery_then_succeeds(vhost: str) -> None:
    """Failures requeue with x-delivery-count growing and 1 s, 2 s, ... of backoff, so a dependency outage
    is waited out instead of burning the delivery limit in milliseconds."""
    broker = Broker(amqp_url(vhost))
    await broker.connect(wait_seconds=10)
    seen: list[tuple[int, float]] = []
    done = asyncio.Event()

    async def flaky(_payload: ImageResult, message: AbstractIncomingMessage) -> None:
        seen.append((delivery_count(message), time.monotonic()))
        if len(seen) < 3:
            raise ConnectionError("the database is away")
        done.set()

    try:
        await broker.consume(Queue.RESULTS, ImageResult, flaky, prefetch=1)
        await broker.publish(RoutingKey.IMAGE_DONE, result(1))
        await asyncio.wait_for(done.wait(), timeout=30)
    finally:
        await broker.stop_consuming()
        await broker.close()
    assert [count for count, _ in seen] == [0, 1, 2]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(seen)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps
    assert await dead_letters(vhost, Queue.RESULTS, timeout=1.0) == []


async def test_poison_goes_to_the_dead_letter_queue_at_once_and_endless_failure_at_the_limit(vhost: str) -> None:
    broker = Broker(amqp_url(vhost))
    await broker.connect(wait_seconds=10)
    deliveries: dict[int, int] = {}

    async def handler(payload: ImageResult, _message: AbstractIncomingMessage) -> None:
        deliveries[payload.row] = deliveries.get(payload.row, 0) + 1
        if payload.row == 1:
            raise PoisonMessage("this can never succeed")
        raise RuntimeError("fails every time")

    try:
        await broker.consume(Queue.RESULTS, ImageResult, handler, prefetch=2)
        await broker.publish(RoutingKey.IMAGE_DONE, result(1))
        await broker.publish(RoutingKey.IMAGE_DONE, result(2))
        # row 2 backs off 1+2+4+8+16+16 s across its deliveries before the broker dead-letters it
        dead = await dead_letters(vhost, Queue.RESULTS, timeout=10.0)
        while len(dead) < 2:
            more = await dead_letters(vhost, Queue.RESULTS, timeout=60.0)
            assert more, f"only {len(dead)} dead letters; deliveries {deliveries}"
            dead += more
    finally:
        await broker.stop_consuming()
        await broker.close()
    assert sorted(ImageResult.model_validate_json(body).row for body in dead) == [1, 2]
    # RabbitMQ 3.10 dead-letters when the delivery count EXCEEDS x-delivery-limit: limit + 1 deliveries
    assert deliveries == {1: 1, 2: DELIVERY_LIMIT + 1}
