"""Invariants under crashes and outages (brief section 5), on the real processes of the running stack.

Each test stretches a 100-image request over several seconds (the image host answers slowly), breaks
something in the middle, and asserts that nothing was lost: every image settled and succeeded, one output
CSV with every slot filled in input order, and the webhook delivered (any duplicates share one webhook-id).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import uuid
from collections.abc import Callable

import aio_pika
import aiohttp
import pytest
from aiohttp import web

from shared.broker import DELIVERY_LIMIT
from shared.messages import Queue
from testkit.stack import MANAGEMENT, MANAGEMENT_HEADERS, service_settings
from tests.support import stack
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.photos import encode, photo
from tests.support.servers import ImageHost, WebhookReceiver

pytestmark = pytest.mark.faults

IMAGES = 100
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


async def settled(http: aiohttp.ClientSession, request_id: str) -> int:
    async with http.get(f"{API}/status/{request_id}") as response:
        return (await response.json())["progress"]["images_settled"]


async def start_slow_request(
    http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
) -> tuple[str, list[tuple[str, str, list[str]]]]:
    body = encode(photo("astronaut.png"), "JPEG", quality=90)
    image_host.delay = 0.4
    urls = [image_host.add(f"p{i}.jpg", body) for i in range(IMAGES)]
    rows = [(f"S{i:03d}", f"Product {i}", urls[2 * i : 2 * i + 2]) for i in range(IMAGES // 2)]
    response = await upload(http, csv_text(rows), webhook_url=webhook.url("/hook"))
    assert response.status == 200
    request_id = (await response.json())["request_id"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while await settled(http, request_id) < 10:
        assert loop.time() < deadline, "the request never started"
        await asyncio.sleep(0.2)
    return request_id, rows


async def assert_nothing_lost(
    http: aiohttp.ClientSession, webhook: WebhookReceiver, request_id: str, rows: list[tuple[str, str, list[str]]]
) -> None:
    final = await wait_final(http, request_id, timeout=240)
    assert final["status"] == "Completed", final
    assert final["progress"]["images_done"] == IMAGES, final
    assert final["progress"]["images_failed"] == 0, final
    async with http.get(final["output_csv_url"]) as response:
        table = list(csv.reader(io.StringIO(await response.text())))
    assert [r[0] for r in table[1:]] == [serial for serial, _, _ in rows]
    for (_serial, _name, inputs), out in zip(rows, table[1:], strict=True):
        outputs = out[3].split(",")
        assert len(outputs) == len(inputs) and all(outputs), out
    await webhook.wait(timeout=60)
    ids = {d.headers["webhook-id"] for d in webhook.deliveries}
    assert ids == {f"msg_{request_id}"}
    assert all(d.json["status"] == "Completed" for d in webhook.deliveries)


async def crash_and_recover(name: str) -> None:
    old = stack.kill_9(name)
    await stack.wait_running(name, old)


@pytest.mark.parametrize("victim", ["compressor-1", "aggregator", "notifier"])
async def test_kill_9_mid_request_loses_nothing(
    stack_api: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver, victim: str
):
    request_id, rows = await start_slow_request(http, image_host, webhook)
    await crash_and_recover(victim)
    await assert_nothing_lost(http, webhook, request_id, rows)


async def outage(program: str, seconds: float) -> None:
    assert "stopped" in stack.supervisorctl("stop", program)
    await asyncio.sleep(seconds)
    assert "started" in stack.supervisorctl("start", program)


@pytest.mark.parametrize(
    ("program", "seconds"), [("rabbitmq", 2), ("minio", 10)], ids=["rabbitmq-restart", "minio-down-10s"]
)
async def test_server_outage_mid_request_loses_nothing(
    stack_api: str,
    http: aiohttp.ClientSession,
    image_host: ImageHost,
    webhook: WebhookReceiver,
    program: str,
    seconds: float,
):
    request_id, rows = await start_slow_request(http, image_host, webhook)
    await outage(program, seconds)
    await assert_nothing_lost(http, webhook, request_id, rows)


async def small_request(http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver) -> str:
    url = image_host.add(f"{uuid.uuid4().hex}.jpg", encode(photo("chelsea.png"), "JPEG", quality=90))
    response = await upload(http, csv_text([("W1", "Webhook test", [url])]), webhook_url=webhook.url("/hook"))
    return (await response.json())["request_id"]


async def webhook_record(http: aiohttp.ClientSession, request_id: str, state: str, timeout: float = 60) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body: dict = {}
    while loop.time() < deadline:
        async with http.get(f"{API}/requests/{request_id}") as response:
            body = await response.json()
        if body.get("webhook") and body["webhook"]["state"] == state:
            return body
        await asyncio.sleep(0.3)
    raise AssertionError(f"webhook never reached {state}: {body}")


async def test_webhook_retried_until_it_succeeds(
    stack_api: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    webhook.responses = [500, 500]
    request_id = await small_request(http, image_host, webhook)
    await webhook.wait(timeout=60)
    body = await webhook_record(http, request_id, "delivered")
    attempts = body["webhook"]["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 500, 204]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert all(a["duration_ms"] >= 0 and a["at"] for a in attempts)
    assert len({d.headers["webhook-id"] for d in webhook.deliveries}) == 1
    assert len(webhook.deliveries) == 3


async def take_from_dlq(queue: str, match: Callable[[bytes], bool], timeout: float = 60) -> bytes:
    """Find (and remove) the message in ``queue``'s dead-letter queue that ``match`` accepts."""
    connection = await aio_pika.connect(AMQP)
    try:
        channel = await connection.channel()
        dlq = await channel.declare_queue(f"{queue}.dlq", durable=True, arguments={"x-queue-type": "quorum"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            message = await dlq.get(no_ack=False, fail=False)
            if message is None:
                await asyncio.sleep(0.3)
                continue
            if match(message.body):
                await message.ack()
                return message.body
            await message.nack(requeue=True)
            await asyncio.sleep(0.05)
        raise AssertionError(f"nothing matching arrived in {queue}.dlq within {timeout}s")
    finally:
        await connection.close()


async def test_webhook_that_never_succeeds_is_dead_lettered_and_the_request_stays_completed(
    stack_api: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    webhook.responses = [500] * 50
    request_id = await small_request(http, image_host, webhook)
    body = await webhook_record(http, request_id, "dead", timeout=90)
    assert body["status"] == "Completed"
    attempts = body["webhook"]["attempts"]
    assert len(attempts) == service_settings().webhook_max_attempts, attempts
    assert all(a["status_code"] == 500 for a in attempts)
    dead = await take_from_dlq("notifier.webhooks", lambda raw: request_id.encode() in raw)
    assert json.loads(dead)["attempt"] == len(attempts)


@pytest.mark.parametrize("queue", [queue.value for queue in Queue])
async def test_poison_message_is_dead_lettered_and_the_queue_keeps_flowing(
    stack_api: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver, queue: str
):
    marker = f"poison-{uuid.uuid4()}"
    connection = await aio_pika.connect(AMQP)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(f'{{"{marker}": '.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue,
        )
    assert marker.encode() in await take_from_dlq(queue, lambda raw: marker.encode() in raw)
    request_id = await small_request(http, image_host, webhook)
    assert (await wait_final(http, request_id))["status"] == "Completed"
    await webhook.wait(timeout=30)


async def test_outbox_left_set_by_a_crash_is_republished_with_the_same_webhook_id(
    stack_api: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    """A crash after the final status but before the event is confirmed leaves ``outbox_pending`` set: the
    sweeper must publish the event again. Simulated by restoring that state on a finished request."""
    from pymongo import AsyncMongoClient

    request_id = await small_request(http, image_host, webhook)
    await webhook.wait(timeout=60)
    client: AsyncMongoClient = AsyncMongoClient("mongodb://127.0.0.1:27017/")
    try:
        db = client["pixpress"]
        loop = asyncio.get_running_loop()
        # the notifier records the attempt after the receiver answered: wait for that record, or deleting it
        # below races the notifier's own write and the republished event is (rightly) deduplicated
        deadline = loop.time() + 30
        while (await db.webhooks.find_one({"_id": request_id}) or {}).get("state") != "delivered":
            assert loop.time() < deadline, "the notifier never recorded the first delivery"
            await asyncio.sleep(0.2)
        await db.webhooks.delete_one({"_id": request_id})  # as if the notifier never saw the first event
        await db.requests.update_one({"_id": request_id}, {"$set": {"outbox_pending": True}})
        deadline = loop.time() + 30
        while len(webhook.deliveries) < 2:
            assert loop.time() < deadline, "the sweeper did not republish the outbox"
            await asyncio.sleep(0.2)
        request = await db.requests.find_one({"_id": request_id})
        assert request is not None and request["outbox_pending"] is False
    finally:
        await client.close()
    assert {d.headers["webhook-id"] for d in webhook.deliveries} == {f"msg_{request_id}"}
    assert all(d.json["status"] == "Completed" for d in webhook.deliveries)


async def test_an_image_that_kills_its_compressor_fails_alone_at_the_delivery_limit(
    stack_api: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    """A source that crashes whichever compressor takes it (an OOM, a codec segfault) must neither loop forever,
    nor vanish into the dead-letter queue leaving its request Processing, nor take the images prefetched with
    it down too. Simulated with kill -9 of the compressor that requests the deadly URL, every time. Expected:
    its first crash sends it (and whatever that compressor held) to the suspect queue, where compressors take
    one task at a time; four more crashes there and it is settled as failed without being fetched again. Every
    other image of the request succeeds."""
    body = encode(photo("chelsea.png"), "JPEG", quality=90)
    deadly = f"deadly-{uuid.uuid4().hex}.jpg"
    killed: list[int] = []

    def kill_the_requester(name: str, request: web.Request) -> None:
        if name == deadly:  # before a byte is answered: the compressor dies with the task unacked
            peer = request.transport.get_extra_info("peername") if request.transport else None
            pid = stack.pid_of_client(peer[1]) if peer else None
            assert pid is not None, f"no process owns the connection from {peer}"
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    image_host.on_hit = kill_the_requester
    image_host.delay = 0.2  # the innocent images are still in flight, prefetched, when a crash happens
    rows = [("D1", "Deadly", [image_host.add(deadly, body)])]
    rows += [(f"H{i}", f"Healthy {i}", [image_host.add(f"ok-{uuid.uuid4().hex}.jpg", body)]) for i in range(1, 13)]
    response = await upload(http, csv_text(rows), webhook_url=webhook.url("/hook"))
    request_id = (await response.json())["request_id"]
    try:
        final = await wait_final(http, request_id, timeout=180)
    finally:
        image_host.on_hit = None
        await stack.wait_compressors_running()
    assert final["status"] == "Completed", final
    assert (final["progress"]["images_done"], final["progress"]["images_failed"]) == (12, 1), final
    # one crash on compressor.images, four on the suspect queue; the fifth suspect delivery is settled unfetched
    assert image_host.hits[deadly] == DELIVERY_LIMIT == len(killed)
    async with http.get(f"{API}/requests/{request_id}/products") as answer:
        products = {item["serial_number"]: item for item in (await answer.json())["items"]}
    reason = f"processing failed or was interrupted {DELIVERY_LIMIT} times; giving up on this image"
    assert products["D1"]["image_errors"] == [reason]
    assert all(products[f"H{i}"]["image_errors"] == [None] for i in range(1, 13)), products
    await webhook.wait(timeout=60)


async def test_image_tasks_lost_from_the_queue_are_reissued_by_the_sweeper(
    stack_api: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    """Tasks can be lost outside our control (an operator purges a queue, a DLQ swallows them after an outage
    longer than the delivery limit spans). The sweeper must notice the request is quiet for
    PIXPRESS_STUCK_AFTER and publish the unsettled images again. Simulated by purging the image queue while no
    compressor runs."""
    from pymongo import AsyncMongoClient

    body = encode(photo("coffee.png"), "JPEG", quality=90)
    urls = [image_host.add(f"lost-{uuid.uuid4().hex}.jpg", body) for _ in range(3)]
    await stack.wait_compressors_running()  # none still starting (a previous test may have killed them)
    assert "stopped" in stack.supervisorctl("stop", "compressor:*")
    client: AsyncMongoClient = AsyncMongoClient("mongodb://127.0.0.1:27017/")
    try:
        response = await upload(http, csv_text([("L1", "Lost tasks", urls)]), webhook_url=webhook.url("/hook"))
        request_id = (await response.json())["request_id"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        # the fan-out moves its cursor only after RabbitMQ confirmed the batch: then the 3 tasks are queued
        while (await client["pixpress"].requests.find_one({"_id": request_id}) or {}).get("fanout_cursor") != 1:
            assert loop.time() < deadline, "the fan-out never finished"
            await asyncio.sleep(0.2)
        async with (
            aiohttp.ClientSession(headers=MANAGEMENT_HEADERS) as management,
            management.delete(f"{MANAGEMENT}/queues/%2F/compressor.images/contents") as purge,
        ):
            assert purge.status == 204, await purge.text()
    finally:
        await client.close()
        assert "started" in stack.supervisorctl("start", "compressor:*")
    assert not any(image_host.hits[url.rsplit("/", 1)[1]] for url in urls), "a task escaped the purge"
    final = await wait_final(http, request_id, timeout=150)  # STUCK_AFTER is 30 s under `make test`
    assert final["status"] == "Completed", final
    assert final["progress"]["images_done"] == 3, final
    assert all(image_host.hits[url.rsplit("/", 1)[1]] >= 1 for url in urls)
    await webhook.wait(timeout=60)
