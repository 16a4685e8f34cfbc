"""RabbitMQ access: one topology for everyone, confirmed publishes, delayed retries and poison-safe consumers.

Topology (declared idempotently by every service at start, so start order does not matter):

* ``pixpress`` topic exchange carries every message (routing keys in :mod:`shared.messages`).
* each consumer queue is a durable quorum queue with a delivery limit; rejected or over-delivered messages
  go through the ``pixpress.dlx`` exchange to ``<queue>.dlq`` and are kept for an operator to inspect.
* delayed retries use ``pixpress.delay.<routing key>.<ms>`` quorum queues whose message TTL dead-letters
  the message back onto the main exchange with its original routing key: the wait happens in the broker,
  not in a sleeping consumer, and survives a consumer crash.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.bulk_publisher import BulkPublisher, BulkPublishError
from shared.messages import QUEUE_BINDINGS, Message, Queue

log = structlog.get_logger()

DELIVERY_LIMIT = 5
DLX = "pixpress.dlx"

M = TypeVar("M", bound=Message)


class PoisonMessage(Exception):
    """Raised by a handler for a message that can never succeed; it goes to the dead-letter queue at once."""


# a declaration RabbitMQ cannot answer (a quorum queue whose Raft cluster is stuck) fails the service's start
# loudly after this long, and supervision restarts it, instead of leaving it healthy-looking but idle
DECLARE_TIMEOUT = 60.0


def _queue_arguments(queue: str) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DLX,
        "x-dead-letter-routing-key": queue,
    }


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the quorum queue delivered this message before (its ``x-delivery-count`` header)."""
    count = (message.headers or {}).get("x-delivery-count")
    return int(count) if isinstance(count, int | str) else 0


def _batched(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    """``itertools.batched`` of Python 3.12, for 3.11."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def delay_queue_name(routing_key: str, delay_ms: int) -> str:
    return f"pixpress.delay.{routing_key}.{delay_ms}"


class Broker:
    """A robust connection with one confirming channel for publishing and one per consumer."""

    def __init__(self, url: str, exchange: str = "pixpress") -> None:
        self._url = url
        self._exchange_name = exchange
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._delay_queues: set[str] = set()
        self._bulk: BulkPublisher | None = None
        self._bulk_lock = asyncio.Lock()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active = 0

    async def connect(self, wait_seconds: float = 120.0) -> None:
        """Connect, waiting for a broker that is still starting rather than failing the service at boot."""
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(wait_seconds),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type((ConnectionError, OSError, aio_pika.exceptions.AMQPError)),
            reraise=True,
        ):
            with attempt:
                self._connection = await aio_pika.connect_robust(
                    self._url,
                    client_properties={
                        "connection_name": "pixpress",
                    },
                )
        assert self._connection is not None
        self._publish_channel = await self._connection.channel(publisher_confirms=True)
        await self.declare_topology()

    async def declare_topology(self) -> None:
        channel = self._channel()
        self._exchange = await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True, timeout=DECLARE_TIMEOUT
        )
        dlx = await channel.declare_exchange(DLX, aio_pika.ExchangeType.DIRECT, durable=True, timeout=DECLARE_TIMEOUT)
        for queue_name, routing_key in QUEUE_BINDINGS.items():
            queue = await channel.declare_queue(
                queue_name.value, durable=True, arguments=_queue_arguments(queue_name.value), timeout=DECLARE_TIMEOUT
            )
            await queue.bind(self._exchange, routing_key.value, timeout=DECLARE_TIMEOUT)
            dead = await channel.declare_queue(
                f"{queue_name.value}.dlq", durable=True, arguments={"x-queue-type": "quorum"}, timeout=DECLARE_TIMEOUT
            )
            await dead.bind(dlx, queue_name.value, timeout=DECLARE_TIMEOUT)

    def _channel(self) -> AbstractChannel:
        if self._publish_channel is None:
            raise RuntimeError("Broker.connect() has not been called")
        return self._publish_channel

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    @staticmethod
    def _amqp_message(payload: BaseModel, headers: dict[str, Any] | None, message_id: str | None) -> aio_pika.Message:
        return aio_pika.Message(
            body=payload.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers or {},
            message_id=message_id,
        )

    async def publish(
        self,
        routing_key: str,
        payload: BaseModel,
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm, so the caller may treat the message as durable."""
        assert self._exchange is not None
        await self._exchange.publish(
            self._amqp_message(payload, headers, message_id), routing_key=routing_key, mandatory=True
        )

    async def publish_many(self, routing_key: str, payloads: Iterable[BaseModel], batch: int = 2000) -> int:
        """Publish persistent messages through the bulk publisher, ``batch`` per socket write, all confirmed.

        On :class:`BulkPublishError` the bulk connection is dropped (the next call opens a new one) and the
        error propagates: the caller's own message is then retried, and republishing is safe because every
        consumer tolerates duplicates.
        """
        count = 0
        for chunk in _batched((payload.model_dump_json().encode() for payload in payloads), batch):
            publisher = await self._bulk_publisher()
            try:
                count += await publisher.publish(self._exchange_name, routing_key, chunk)
            except BulkPublishError:
                self._bulk = None
                await publisher.close()
                raise
        return count

    async def _bulk_publisher(self) -> BulkPublisher:
        async with self._bulk_lock:
            if self._bulk is None or not self._bulk.usable:
                if self._bulk is not None:
                    await self._bulk.close()
                self._bulk = await BulkPublisher.connect(self._url, name="pixpress-bulk")
            return self._bulk

    async def publish_delayed(self, routing_key: str, payload: BaseModel, delay_ms: int) -> None:
        """Park a message in a TTL queue that hands it back to the main exchange after ``delay_ms``."""
        name = delay_queue_name(routing_key, delay_ms)
        channel = self._channel()
        if name not in self._delay_queues:
            await channel.declare_queue(
                name,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": self._exchange_name,
                    "x-dead-letter-routing-key": routing_key,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            self._delay_queues.add(name)
        await channel.default_exchange.publish(self._amqp_message(payload, None, None), routing_key=name)

    async def consume(
        self,
        queue: Queue,
        model: type[M],
        handler: Callable[[M, AbstractIncomingMessage], Awaitable[None]],
        prefetch: int,
    ) -> None:
        """Deliver parsed messages to ``handler``; ack after it returns, dead-letter poison, requeue failures.

        A message that does not parse is poison: it is rejected without requeue so it lands in the DLQ at
        once. An unexpected exception requeues it; the quorum queue's delivery limit bounds the retries.
        """
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch, timeout=DECLARE_TIMEOUT)
        amqp_queue = await channel.declare_queue(
            queue.value, durable=True, arguments=_queue_arguments(queue.value), timeout=DECLARE_TIMEOUT
        )

        async def on_message(message: AbstractIncomingMessage) -> None:
            self._begin()
            try:
                await self._dispatch(queue, model, handler, message)
            finally:
                self._end()

        tag = await amqp_queue.consume(on_message, no_ack=False, timeout=DECLARE_TIMEOUT)
        self._consumers.append((amqp_queue, tag))

    async def _dispatch(
        self,
        queue: Queue,
        model: type[M],
        handler: Callable[[M, AbstractIncomingMessage], Awaitable[None]],
        message: AbstractIncomingMessage,
    ) -> None:
        structlog.contextvars.clear_contextvars()
        try:
            payload = model.model_validate_json(message.body)
        except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.error("poison_message", queue=queue.value, reason=str(exc)[:500])
            await message.reject(requeue=False)
            return
        request_id = getattr(payload, "request_id", None)
        structlog.contextvars.bind_contextvars(request_id=request_id, queue=queue.value)
        try:
            await handler(payload, message)
        except PoisonMessage as exc:
            log.error("poison_message", reason=str(exc)[:500])
            await message.reject(requeue=False)
        except asyncio.CancelledError:
            await message.nack(requeue=True)
            raise
        except Exception:
            # most failures here are a dependency that is briefly away (database, storage, broker): wait before
            # handing the message back, longer each delivery, so the delivery limit spans ~47 s of outage
            # (6 deliveries: RabbitMQ 3.10 dead-letters past the limit) instead of a few milliseconds.
            deliveries = delivery_count(message)
            log.exception("handler_failed", deliveries=deliveries)
            await asyncio.sleep(min(2.0**deliveries, 16.0))
            await message.nack(requeue=True)
        else:
            await message.ack()
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "queue")

    def _begin(self) -> None:
        self._active += 1
        self._idle.clear()

    def _end(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def stop_consuming(self, grace_seconds: float = 30.0) -> None:
        """Stop taking new messages and let in-flight handlers finish; unfinished ones are requeued on close."""
        for amqp_queue, tag in self._consumers:
            try:
                await amqp_queue.cancel(tag)
            except Exception:  # the channel may already be gone during shutdown
                log.warning("cancel_failed", queue=amqp_queue.name)
        self._consumers.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_seconds)
        except TimeoutError:
            log.warning("shutdown_grace_expired", in_flight=self._active)

    async def close(self) -> None:
        if self._bulk is not None:
            await self._bulk.close()
            self._bulk = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
