"""One compressor worker run in this process against the real RabbitMQ (a vhost of its own), MinIO (a bucket of its
own) and a local image host: what the output cache does with settings the stack's services cannot be given per test
(cache off, an object at the end of its retention window, a clock). The keys and rules alone: test_cache_rules.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aio_pika
import aiohttp
import pytest

from services.compressor.compress import compress
from services.compressor.output_cache import OutputCache, content_key
from services.compressor.worker import CompressorWorker
from shared.broker import Broker, delivery_count
from shared.cache import shared_object_key
from shared.download import DownloadLimits
from shared.messages import ImageBatch, ImageResult, ImageTask, Queue, RoutingKey, SourceRecord
from shared.settings import Settings
from shared.storage import Storage
from shared.url_guard import guarded_connector
from testkit.stack import amqp_url
from tests.support.photos import encode, photo
from tests.support.scratch import drop_bucket, minio_client
from tests.support.servers import ImageHost

SOURCE = hashlib.sha256(b"some source bytes").hexdigest()
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


# --- one worker in this process -----------------------------------------------------------------------------------


@dataclass
class Rig:
    broker: Broker
    storage: Storage
    session: aiohttp.ClientSession
    executor: ThreadPoolExecutor
    vhost: str
    host: ImageHost
    storage_http: aiohttp.ClientSession
    settings: Settings

    def worker(self, cache: OutputCache | None) -> CompressorWorker:
        return CompressorWorker(
            broker=self.broker,
            storage=self.storage,
            session=self.session,
            executor=self.executor,
            limits=DownloadLimits(max_bytes=20_000_000, max_redirects=2, total_timeout=20, allow_private=True),
            quality=50,
            max_pixels=100_000_000,
            max_frames=100,
            max_attempts=1,
            retry_base_ms=100,
            jpeg_fast_path=True,
            cache=cache,
        )

    def cache(self, retention_days: int | None = None, clock: Callable[[], datetime] | None = None) -> OutputCache:
        now = clock or (lambda: datetime.now(UTC))
        return OutputCache(self.storage, self.storage_http, 50, True, retention_days, now)

    async def results(self, count: int) -> list[ImageResult]:
        connection = await aio_pika.connect(amqp_url(self.vhost))
        found: list[ImageResult] = []
        async with connection:
            queue = await (await connection.channel()).get_queue(Queue.RESULTS.value)
            for _ in range(50):
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    if len(found) >= count:
                        break
                    await asyncio.sleep(0.1)
                    continue
                found.append(ImageResult.model_validate_json(message.body))
        assert len(found) == count, found
        return found


@pytest.fixture
async def rig(vhost: str, image_host: ImageHost) -> AsyncIterator[Rig]:
    settings = Settings(s3_bucket=f"pixpress-test-cache-{uuid.uuid4().hex[:8]}")
    storage = Storage(settings)
    await storage.ensure_bucket()
    broker = Broker(amqp_url(vhost))
    await broker.connect(wait_seconds=10)
    session = aiohttp.ClientSession(connector=guarded_connector(True))
    storage_http = aiohttp.ClientSession()
    executor = ThreadPoolExecutor(1)
    try:
        yield Rig(broker, storage, session, executor, vhost, image_host, storage_http, settings)
    finally:
        await session.close()
        await storage_http.close()
        await broker.close()
        executor.shutdown()
        await asyncio.to_thread(drop_bucket, settings)


def task(url: str, known: SourceRecord | None = None) -> ImageTask:
    request_id = str(uuid.uuid4())
    return ImageTask(request_id=request_id, product_id=f"{request_id}:1", row=1, index=0, url=url, known=known)


async def test_with_the_cache_off_every_image_is_downloaded_and_compressed_under_its_request(rig: Rig):
    body = encode(photo("coffee.png").convert("RGB"), "JPEG", quality=90)
    url = rig.host.add("off.jpg", body, validators="both")
    worker = rig.worker(cache=None)
    first = task(url)
    await worker._process(first)
    remembered = SourceRecord(
        sha256=hashlib.sha256(body).hexdigest(),
        size=len(body),
        etag=rig.host.versions["off.jpg"].etag,
        object_key=rig.cache().key_for(hashlib.sha256(body).hexdigest(), "jpg"),
    )
    second = task(url, known=remembered)  # even told what is known, it asks for nothing
    await worker._process(second)
    results = await rig.results(2)
    assert [(a.conditional, a.status) for a in rig.host.served] == [(False, 200), (False, 200)]
    by_request = {result.request_id: result for result in results}
    for sent in (first, second):
        result = by_request[sent.request_id]
        assert result.ok and not result.cached and result.cache is None and result.cache_object is None
        assert result.source is None and result.codec == "dct"
        assert result.output_url == rig.storage.public_url(f"images/{sent.request_id}/0000001-00.jpg")
    stored = await rig.storage.stat(f"images/{second.request_id}/0000001-00.jpg")
    assert stored is not None and stored.size == len(compress(body, quality=50).data)


async def test_an_output_in_the_second_half_of_the_retention_window_is_neither_reused_nor_rewritten(rig: Rig):
    body = encode(photo("chelsea.png").convert("RGB"), "JPEG", quality=90)
    url = rig.host.add("late.jpg", body)
    await rig.worker(rig.cache(retention_days=1))._process(task(url))
    made = (await rig.results(1))[0]
    assert made.cache_object is not None
    before = await rig.storage.stat(made.cache_object)

    thirteen_hours_on = rig.cache(retention_days=1, clock=lambda: datetime.now(UTC) + timedelta(hours=13))
    late = task(url)
    await rig.worker(thirteen_hours_on)._process(late)
    result = (await rig.results(1))[0]
    assert not result.cached and result.cache_object is None and result.codec == "dct"  # compressed again
    assert result.output_url == rig.storage.public_url(f"images/{late.request_id}/0000001-00.jpg")
    assert await rig.storage.stat(made.cache_object) == before  # the shared object was not touched


async def test_an_output_in_the_second_quarter_is_reused_and_its_last_use_moves_forward(rig: Rig):
    body = encode(photo("rocket.jpg").convert("RGB"), "JPEG", quality=85)
    url = rig.host.add("aging.jpg", body)
    await rig.worker(rig.cache(retention_days=1))._process(task(url))
    key = (await rig.results(1))[0].cache_object
    assert key is not None
    before = await rig.storage.stat(key)
    await asyncio.sleep(1.1)  # Last-Modified has whole seconds

    seven_hours_on = rig.cache(retention_days=1, clock=lambda: datetime.now(UTC) + timedelta(hours=7))
    await rig.worker(seven_hours_on)._process(task(url))
    result = (await rig.results(1))[0]
    assert result.cached and result.cache == "same_bytes" and result.cache_object == key
    after = await rig.storage.stat(key)
    assert before is not None and after is not None
    assert after.last_modified > before.last_modified
    assert (after.size, after.content_type, after.metadata) == (before.size, before.content_type, before.metadata)


async def test_an_output_stored_under_a_guessed_extension_is_found_and_validators_are_reported(rig: Rig):
    """A PNG with transparency becomes WebP: its output is looked up under .jpg then .webp, and the result carries
    the validators and hash the aggregator remembers for the URL."""
    image = photo("astronaut.png").convert("RGBA")
    image.putalpha(128)
    body = encode(image, "PNG")
    url = rig.host.add("alpha.png", body, validators="etag")
    worker = rig.worker(rig.cache())
    await worker._process(task(url))
    await worker._process(task(url))
    made, reused = await rig.results(2)
    assert made.cache_object is not None and made.cache_object.endswith(".webp") and not made.cached
    assert reused.cached and reused.cache == "same_bytes" and reused.cache_object == made.cache_object
    for result in (made, reused):
        assert result.source is not None
        assert result.source.sha256 == hashlib.sha256(body).hexdigest() and result.source.size == len(body)
        assert result.source.etag == rig.host.versions["alpha.png"].etag
        assert result.source.object_key == made.cache_object
    assert made.source is not None and worker.cache is not None
    assert made.cache_object == shared_object_key(content_key(made.source.sha256, worker.cache.fingerprint), "webp")


async def test_a_reused_output_reports_the_formats_of_the_run_that_made_it(rig: Rig):
    """The console shows each image's format before and after. A reused output ran no codec, and a revalidated one
    downloaded nothing, so both read the formats back from the shared object: an opaque PNG reports PNG to JPEG
    whichever way its output came (the formats travel with the object, like its codec)."""
    body = encode(photo("coffee.png").convert("RGB"), "PNG")
    url = rig.host.add("opaque.png", body, validators="etag")
    worker = rig.worker(rig.cache())
    await worker._process(task(url))
    made = (await rig.results(1))[0]
    await worker._process(task(url))
    same_bytes = (await rig.results(1))[0]
    assert made.source is not None
    await worker._process(task(url, known=made.source.model_copy(update={"url_id": None})))
    revalidated = (await rig.results(1))[0]
    assert (made.cached, same_bytes.cache, revalidated.cache) == (False, "same_bytes", "revalidated")
    for result in (made, same_bytes, revalidated):
        assert (result.format_in, result.format_out, result.codec) == ("PNG", "JPEG", "pillow"), result
        assert result.output_url == made.output_url


async def test_without_the_public_read_policy_lookups_fall_back_to_a_signed_head(rig: Rig):
    """The fast lookup is an anonymous HEAD; a store that refuses it (403) is asked again with credentials."""
    body = encode(photo("coffee.png").convert("RGB"), "JPEG", quality=80)
    url = rig.host.add("private.jpg", body)
    worker = rig.worker(rig.cache())
    await worker._process(task(url))
    made = (await rig.results(1))[0]
    assert made.cache_object is not None
    minio = minio_client(rig.settings)
    await asyncio.to_thread(minio.delete_bucket_policy, rig.settings.s3_bucket)
    async with rig.storage_http.head(rig.storage.endpoint_url(made.cache_object)) as anonymous:
        assert anonymous.status == 403
    await worker._process(task(url))
    reused = (await rig.results(1))[0]
    assert reused.cached and reused.cache_object == made.cache_object


async def test_a_batch_is_processed_together_and_its_results_published_together(rig: Rig):
    body = encode(photo("chelsea.png").convert("RGB"), "JPEG", quality=88)
    url = rig.host.add("batched.jpg", body, validators="etag")
    worker = rig.worker(rig.cache())
    await worker._process(task(url))
    made = (await rig.results(1))[0]
    assert made.source is not None
    known = made.source.model_copy(update={"url_id": None})
    tasks = [task(url, known) for _ in range(5)] + [task(rig.host.url("/img/missing.jpg"), known)]
    await worker.process_batch(ImageBatch(tasks=tasks))
    results = {result.request_id: result for result in await rig.results(6)}
    assert [results[t.request_id].cache for t in tasks[:5]] == ["revalidated"] * 5
    assert all(results[t.request_id].output_url == made.output_url for t in tasks[:5])
    missing = results[tasks[5].request_id]  # its conditional GET got a 404: settled as failed, like alone
    assert not missing.ok and missing.error == "download failed: HTTP 404 from image host"
    assert [(a.conditional, a.status) for a in rig.host.served_for("batched.jpg")] == [(False, 200)] + [(True, 304)] * 5


async def test_a_redelivered_batch_is_split_into_single_tasks(rig: Rig):
    """A batch whose first delivery failed (its compressor died with it, say) is not processed again as a batch:
    its tasks go to the suspect queue one by one, where a task that kills compressors hurts no other."""
    url = rig.host.add("split.jpg", encode(photo("coffee.png").convert("RGB"), "JPEG", quality=70))
    tasks = [task(url) for _ in range(3)]
    worker = rig.worker(rig.cache())
    delivered: list[int] = []
    split = asyncio.Event()

    async def first_fails(batch: ImageBatch, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        delivered.append(delivery_count(message))
        if len(delivered) == 1:
            raise ConnectionError("the compressor lost its storage mid-batch")
        await worker.handle_batch(batch, message)
        split.set()

    await rig.broker.consume(Queue.IMAGES_BATCH, ImageBatch, first_fails, prefetch=1)
    await rig.broker.publish_many(RoutingKey.IMAGE_BATCH, [ImageBatch(tasks=tasks)])
    await asyncio.wait_for(split.wait(), timeout=30)
    await rig.broker.stop_consuming()
    assert delivered == [0, 1]
    assert rig.host.served_for("split.jpg") == []  # nothing was downloaded: the batch was only split
    connection = await aio_pika.connect(amqp_url(rig.vhost))
    async with connection:
        queue = await (await connection.channel()).get_queue(Queue.IMAGES_SUSPECT.value)
        singles = [ImageTask.model_validate_json((await queue.get(no_ack=True)).body) for _ in tasks]
    assert singles == tasks
