"""Results several to a message (``image.done.batch``, docs/messages.md): batched by a real compressor, recorded
exactly once by a real aggregator, mixed with single results from an older compressor, and refused whole when
malformed.

A real compressor and aggregator of this checkout run beside the stack on its servers, with a RabbitMQ vhost and a
database of their own (tests/support/guarded.py). A result waits up to a second for others to share its message
here, so that the images of one request, finishing a few milliseconds apart, go out together whatever the load.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest_asyncio

from services.compressor.result_batches import ResultBatches
from services.ingest.csv_parser import ProductRow
from services.ingest.records import product_document
from shared.broker import Broker
from shared.database import product_id
from shared.messages import ImageResult, ImageResults, ImageTask, Queue, RequestStatus, RoutingKey
from testkit.stack import amqp_url
from tests.support.guarded import GuardedServices, guarded_database, guarded_services
from tests.support.photos import encode, photo
from tests.support.servers import ImageHost
from tests.support.staged import final_request, insert_as_ingest, request_document


@pytest_asyncio.fixture(scope="module")
async def services() -> AsyncIterator[GuardedServices]:
    async with guarded_services(
        "compressor",
        "aggregator",
        PIXPRESS_ALLOW_PRIVATE_URLS="true",
        PIXPRESS_RESULT_BATCH="16",
        PIXPRESS_RESULT_BATCH_DELAY_MS="1000",
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def database(services: GuardedServices) -> AsyncIterator[Any]:
    async with guarded_database(services) as database:
        yield database


async def fanned_out_request(database: Any, rows: list[list[str]]) -> str:
    """A request as ingest leaves it after its fan-out: one product per row, each with its URLs."""
    request_id = str(uuid.uuid4())
    document = request_document(request_id, products=len(rows), images=sum(map(len, rows)))
    document.update(status=RequestStatus.PROCESSING.value, fanout_complete=True, fanout_cursor=len(rows))
    await insert_as_ingest(database, document)
    for row, urls in enumerate(rows, start=1):
        await database.products.insert_one(product_document(request_id, ProductRow(row, f"B{row}", "Batched", urls)))
    return request_id


def result(request_id: str, row: int, index: int, bytes_in: int = 1000, bytes_out: int = 300) -> ImageResult:
    output = f"http://127.0.0.1:9000/pixpress/images/{request_id}/{row:07d}-{index:02d}.jpg"
    return ImageResult(
        request_id=request_id,
        product_id=product_id(request_id, row),
        row=row,
        index=index,
        ok=True,
        output_url=output,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        codec="dct",
    )


async def recorded(database: Any, request_id: str, count: int, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await database.results.count_documents({"request_id": request_id}) < count:
        assert loop.time() < deadline, f"{request_id}: fewer than {count} results recorded after {timeout}s"
        await asyncio.sleep(0.1)


async def test_a_request_s_results_arrive_batched_and_it_completes_with_exact_counts(
    services: GuardedServices, database: Any, image_host: ImageHost
):
    photos = [encode(photo(name), "JPEG", quality=90) for name in ("chelsea.png", "coffee.png", "astronaut.png")]
    urls = [image_host.add(f"{uuid.uuid4().hex}.jpg", photos[n % 3]) for n in range(5)]
    missing = image_host.url(f"/img/{uuid.uuid4().hex}-missing.jpg")  # a 404: a failed image is a result too
    rows = [urls[:2], urls[2:4], [urls[4], missing]]
    request_id = await fanned_out_request(database, rows)
    tasks = [
        ImageTask(request_id=request_id, product_id=product_id(request_id, row), row=row, index=index, url=url)
        for row, row_urls in enumerate(rows, start=1)
        for index, url in enumerate(row_urls)
    ]
    connection = await aio_pika.connect(services.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("pixpress")
        # copies of everything the compressor publishes, in queues of this test's own (a topic exchange hands each
        # bound queue its own copy): what the aggregator receives, without taking it from the aggregator
        spies = {}
        for key in (RoutingKey.IMAGE_DONE_BATCH, RoutingKey.IMAGE_DONE):
            spies[key] = await channel.declare_queue(exclusive=True, auto_delete=True)
            await spies[key].bind(exchange, key.value)
        for task in tasks:
            body = task.model_dump_json().encode()
            outgoing = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(outgoing, routing_key=RoutingKey.IMAGE_TODO.value)

        request = await final_request(database, request_id)
        assert request["status"] == RequestStatus.COMPLETED.value, request
        assert (request["images_done"], request["images_failed"]) == (5, 1)
        assert request["bytes_in"] == sum(len(photos[n % 3]) for n in range(5))

        batches: list[ImageResults] = []
        while (message := await spies[RoutingKey.IMAGE_DONE_BATCH].get(no_ack=True, fail=False)) is not None:
            batches.append(ImageResults.model_validate_json(message.body))
        assert await spies[RoutingKey.IMAGE_DONE].get(no_ack=True, fail=False) is None, "a single image.done"
    slots = sorted((r.row, r.index) for batch in batches for r in batch.results)
    assert slots == sorted((t.row, t.index) for t in tasks)  # every image once, in some message
    assert len(batches) < len(tasks), [len(b.results) for b in batches]
    stored = await database.results.find({"request_id": request_id}).to_list()
    assert sorted((r["row"], r["index"], r["ok"]) for r in stored) == [
        (row, index, (row, index) != (3, 1)) for row, index in slots
    ]
    assert sum(r["bytes_out"] for r in stored) == request["bytes_out"] > 0


async def test_a_single_result_from_an_older_compressor_is_counted_beside_batched_ones(
    services: GuardedServices, database: Any
):
    """A rolling deploy: one compressor still publishes ``image.done`` per image, another batches."""
    request_id = await fanned_out_request(database, [["https://img.example/a.jpg", "https://img.example/b.jpg"]] * 2)
    await services.publish(RoutingKey.IMAGE_DONE, result(request_id, 1, 0, 100, 40))
    await services.publish(
        RoutingKey.IMAGE_DONE_BATCH,
        ImageResults(results=[result(request_id, 1, 1, 200, 50), result(request_id, 2, 0, 300, 60)]),
    )
    await services.publish(RoutingKey.IMAGE_DONE, result(request_id, 2, 1, 400, 70))

    request = await final_request(database, request_id)
    assert request["status"] == RequestStatus.COMPLETED.value, request
    assert (request["images_done"], request["images_failed"]) == (4, 0)
    assert (request["bytes_in"], request["bytes_out"]) == (1000, 220)


async def test_a_batch_delivered_again_counts_each_image_once(services: GuardedServices, database: Any):
    """The aggregator died after recording a batch and before its ack: the batch comes again, whole or overlapping
    another, before and after its request is final."""
    request_id = await fanned_out_request(database, [["https://img.example/a.jpg"]] * 3)
    first = ImageResults(results=[result(request_id, 1, 0, 100, 10), result(request_id, 2, 0, 200, 20)])
    overlapping = ImageResults(results=[result(request_id, 2, 0, 200, 20), result(request_id, 3, 0, 400, 40)])
    for batch in (first, first, overlapping):
        await services.publish(RoutingKey.IMAGE_DONE_BATCH, batch)
    request = await final_request(database, request_id)
    assert request["status"] == RequestStatus.COMPLETED.value, request
    assert (request["images_done"], request["images_failed"]) == (3, 0)
    assert (request["bytes_in"], request["bytes_out"]) == (700, 70)

    # the same batch once more after the request is final, then a batch of another request behind it in the queue:
    # once that one is recorded, the redelivery has been handled too
    await services.publish(RoutingKey.IMAGE_DONE_BATCH, first)
    marker = await fanned_out_request(database, [["https://img.example/m.jpg"]])
    await services.publish(RoutingKey.IMAGE_DONE_BATCH, ImageResults(results=[result(marker, 1, 0)]))
    await final_request(database, marker)
    again = await database.requests.find_one({"_id": request_id})
    assert (again["images_done"], again["bytes_in"], again["bytes_out"]) == (3, 700, 70)
    assert await database.results.count_documents({"request_id": request_id}) == 3
    # counters of an open request live in ``progress``: a duplicate counted there would bring the document back
    assert await database.progress.find_one({"_id": request_id}) is None


async def test_a_batch_with_a_malformed_result_is_dead_lettered_whole(services: GuardedServices, database: Any):
    request_id = await fanned_out_request(database, [["https://img.example/a.jpg", "https://img.example/b.jpg"]])
    good = json.loads(result(request_id, 1, 0).model_dump_json())
    incomplete = json.loads(result(request_id, 1, 1).model_dump_json())
    del incomplete["ok"]
    body = json.dumps({"results": [good, incomplete]}).encode()
    await services.publish_raw(RoutingKey.IMAGE_DONE_BATCH, body)

    for _ in range(20):
        if await services.take("aggregator.results.batch.dlq") == body:
            break
    else:
        raise AssertionError("the malformed batch did not reach aggregator.results.batch.dlq")
    assert await database.results.count_documents({"request_id": request_id}) == 0
    assert (await database.requests.find_one({"_id": request_id}))["status"] == RequestStatus.PROCESSING.value


# --- when a compressor's batch goes (ResultBatches on a real broker, in a vhost of its own) ---------------------

LONG = 600.0  # a delay no test waits for: a batch that goes, goes for another reason


async def published(vhost: str) -> list[ImageResults]:
    connection = await aio_pika.connect(amqp_url(vhost))
    async with connection:
        queue = await (await connection.channel()).get_queue(Queue.RESULTS_BATCH.value)
        found = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found.append(ImageResults.model_validate_json(message.body))
        return found


@pytest_asyncio.fixture
async def broker(vhost: str) -> AsyncIterator[Broker]:
    """A compressor's broker connection on the test's own vhost, for driving ``ResultBatches`` directly."""
    connected = Broker(amqp_url(vhost))
    await connected.connect(wait_seconds=10)
    try:
        yield connected
    finally:
        await connected.close()


async def finish_with_result(batches: ResultBatches, row: int) -> None:
    """A task as the compressor handles one: in progress, then its result submitted and confirmed."""
    with batches.working():
        await batches.submit(result("r", row, 0))


async def test_a_lone_result_goes_at_once_without_waiting_for_the_delay(vhost: str, broker: Broker):
    batches = ResultBatches(broker, max_results=16, max_delay=LONG)
    with batches.working():
        await asyncio.wait_for(batches.submit(result("r", 1, 0)), timeout=30)
    assert [[r.row for r in b.results] for b in await published(vhost)] == [[1]]


async def test_results_wait_for_tasks_still_in_progress_and_go_when_the_last_ends(vhost: str, broker: Broker):
    batches = ResultBatches(broker, max_results=16, max_delay=LONG)
    retried = asyncio.Event()

    async def task_without_result() -> None:  # e.g. a download retry parked in a delay queue
        with batches.working():
            await retried.wait()

    other = asyncio.create_task(task_without_result())
    await asyncio.sleep(0)  # it is in progress before the two others finish
    waiting = [asyncio.create_task(finish_with_result(batches, row)) for row in (1, 2)]
    await asyncio.sleep(0.5)
    assert not any(t.done() for t in waiting), "results went while another task could still join them"
    assert await published(vhost) == []
    retried.set()  # the last task in progress ends without a result: nothing else can join
    await asyncio.wait_for(asyncio.gather(*waiting, other), timeout=30)
    assert [sorted(r.row for r in b.results) for b in await published(vhost)] == [[1, 2]]


async def test_a_full_batch_goes_without_waiting_for_the_tasks_in_progress(vhost: str, broker: Broker):
    batches = ResultBatches(broker, max_results=2, max_delay=LONG)
    busy = asyncio.Event()

    async def slow_task() -> None:
        with batches.working():
            await busy.wait()

    slow = asyncio.create_task(slow_task())
    await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(finish_with_result(batches, 1), finish_with_result(batches, 2)), timeout=30)
    assert [sorted(r.row for r in b.results) for b in await published(vhost)] == [[1, 2]]
    busy.set()
    await slow
