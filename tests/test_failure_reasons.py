"""Every member of the fixed failure-reason set, made to happen for real by the compressor's own code.

A ``CompressorWorker`` runs in this process with tight limits (one download attempt, small byte and pixel
limits) against the stack's real RabbitMQ (a vhost of its own), MinIO and a local image host with faults. Each
case feeds one task through the worker's real entry points and checks that ``pixpress_image_failures_total``
moved for exactly its reason and nothing else, and that the result went out on the broker: so a reworded
failure message cannot silently drift into ``other``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage
from pamqp.common import FieldValue
from prometheus_client import CollectorRegistry

from services.compressor.worker import CompressorWorker
from shared import metrics
from shared.broker import DELIVERY_LIMIT, Broker
from shared.download import DownloadLimits
from shared.messages import ImageResult, ImageTask, Queue
from shared.settings import Settings
from shared.storage import Storage
from testkit.stack import amqp_url
from tests.support import zoo
from tests.support.photos import photo_as_jpeg
from tests.support.servers import ImageHost

MAX_BYTES = 2_000_000
MAX_PIXELS = 1_000_000
MAX_REDIRECTS = 2
REQUEST_ID = "00000000-0000-4000-8000-00000000face"


@dataclass
class Rig:
    worker: CompressorWorker
    channel: aio_pika.abc.AbstractChannel
    registry: CollectorRegistry
    host: ImageHost

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample of this test's registry; 0 when it has none yet."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def count(self, reason: str) -> float:
        return self.value("pixpress_image_failures_total", {"reason": reason})

    def counts(self) -> dict[str, float]:
        return {reason: self.count(reason) for reason in metrics.FAILURE_REASONS}

    async def message(self, deliveries: int = 0) -> AbstractIncomingMessage:
        """A real delivery from a real queue, carrying the delivery count a quorum queue would have set."""
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        headers: dict[str, FieldValue] = {"x-delivery-count": deliveries} if deliveries else {}
        await self.channel.default_exchange.publish(aio_pika.Message(b"{}", headers=headers), routing_key=queue.name)
        incoming = await queue.get(timeout=10)
        assert incoming is not None
        return incoming

    async def published_result(self) -> ImageResult:
        queue = await self.channel.get_queue(Queue.RESULTS.value)
        incoming = await queue.get(timeout=10, no_ack=True)
        assert incoming is not None, "the worker published no result"
        return ImageResult.model_validate_json(incoming.body)


@pytest.fixture
async def rig(stack: str, vhost: str) -> AsyncIterator[Rig]:
    settings = Settings()
    broker = Broker(amqp_url(vhost), settings.exchange)
    await broker.connect(wait_seconds=30)
    storage = Storage(settings)
    registry = CollectorRegistry()
    metrics.register("compressor", registry)  # the module's counters, read through a registry of this test's own
    host = ImageHost()
    await host.start()
    connection = await aio_pika.connect(amqp_url(vhost))
    channel = await connection.channel()
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=5)) as session:
            worker = CompressorWorker(
                broker=broker,
                storage=storage,
                session=session,
                executor=executor,
                limits=DownloadLimits(
                    max_bytes=MAX_BYTES, max_redirects=MAX_REDIRECTS, total_timeout=10, allow_private=True
                ),
                quality=50,
                max_pixels=MAX_PIXELS,
                max_frames=100,
                max_attempts=1,  # a transient failure is final at once
                retry_base_ms=100,
            )
            yield Rig(worker, channel, registry, host)
    finally:
        executor.shutdown()
        await connection.close()
        await broker.close()
        await host.stop()


def _task(url: str, row: int) -> ImageTask:
    return ImageTask(request_id=REQUEST_ID, product_id=f"{REQUEST_ID}:{row}", row=row, index=0, url=url)


def _cases(host: ImageHost) -> list[tuple[str, str, str]]:
    """(reason, URL path, text the published error starts with)."""
    host.add("page.jpg", b"<!doctype html><html><body>not a picture</body></html>", "text/html")
    host.add("truncated.jpg", zoo.truncated_jpeg())
    host.add("wide.png", zoo.png_bomb(2000, 1000))  # 2 Mpx, over MAX_PIXELS; a few KB on the wire
    host.add("empty.jpg", b"")
    return [
        ("download_4xx", "/img/missing.jpg", "download failed: HTTP 404"),
        ("download_4xx", "/status/410", "download failed: HTTP 410"),
        ("download_transient", "/status/503", "download failed: HTTP 503 from image host (after 1 attempts)"),
        ("not_an_image", "/img/page.jpg", "not an image"),
        ("not_an_image", "/img/empty.jpg", "download failed: empty response body"),
        ("too_large", "/huge", "download failed: image is larger than the limit"),
        ("too_large", "/img/wide.png", "image has"),
        ("corrupt", "/img/truncated.jpg", "image data is corrupt or truncated"),
        ("other", f"/redirect/{MAX_REDIRECTS + 1}/page.jpg", f"download failed: more than {MAX_REDIRECTS} redirects"),
    ]


async def test_every_download_and_codec_failure_counts_under_its_reason(rig: Rig):
    for row, (reason, path, error) in enumerate(_cases(rig.host), start=1):
        before = rig.counts()
        failed_before = rig.registry.get_sample_value("pixpress_images_processed_total", {"outcome": "failed"})
        await rig.worker.handle(_task(rig.host.url(path), row), await rig.message())
        result = await rig.published_result()
        assert (result.row, result.ok) == (row, False)
        assert result.error is not None and result.error.startswith(error), (reason, result.error)
        moved = {name: value - before[name] for name, value in rig.counts().items() if value != before[name]}
        assert moved == {reason: 1.0}, (path, result.error, moved)
        failed_after = rig.registry.get_sample_value("pixpress_images_processed_total", {"outcome": "failed"})
        assert failed_after == (failed_before or 0) + 1


async def test_a_task_that_kept_killing_compressors_counts_as_interrupted(rig: Rig):
    before = rig.counts()
    rig.host.add("fine.jpg", photo_as_jpeg("chelsea.png"))
    # its last delivery from the suspect queue: the worker settles it as failed without touching it again
    message = await rig.message(deliveries=DELIVERY_LIMIT - 1)
    await rig.worker.handle_suspect(_task(rig.host.url("/img/fine.jpg"), 1), message)
    result = await rig.published_result()
    assert not result.ok and result.error is not None and "interrupted" in result.error
    assert rig.host.hits["fine.jpg"] == 0
    moved = {name: value - before[name] for name, value in rig.counts().items() if value != before[name]}
    assert moved == {"interrupted": 1.0}


async def test_a_compressed_image_counts_once_with_its_bytes_and_codec(rig: Rig):
    body = photo_as_jpeg("chelsea.png")
    rig.host.add("ok.jpg", body)
    value = rig.value
    before = {
        "ok": value("pixpress_images_processed_total", {"outcome": "ok"}),
        "in": value("pixpress_image_bytes_in_total"),
        "out": value("pixpress_image_bytes_out_total"),
        "dct": value("pixpress_images_codec_total", {"codec": "dct"}),
        "store": value("pixpress_stage_seconds_count", {"stage": "store"}),
    }
    await rig.worker.handle(_task(rig.host.url("/img/ok.jpg"), 1), await rig.message())
    result = await rig.published_result()
    assert result.ok and result.codec == "dct"
    assert value("pixpress_images_processed_total", {"outcome": "ok"}) == before["ok"] + 1
    assert value("pixpress_image_bytes_in_total") == before["in"] + len(body) == before["in"] + result.bytes_in
    assert value("pixpress_image_bytes_out_total") == before["out"] + result.bytes_out
    assert value("pixpress_images_codec_total", {"codec": "dct"}) == before["dct"] + 1
    assert value("pixpress_stage_seconds_count", {"stage": "store"}) == before["store"] + 1


async def test_a_redelivered_task_is_moved_not_counted(rig: Rig):
    rig.host.add("again.jpg", photo_as_jpeg("coffee.png"))
    value = rig.value

    def processed() -> float:
        return sum(value("pixpress_images_processed_total", {"outcome": o}) for o in metrics.IMAGE_OUTCOMES)

    processed_before = processed()
    quarantined = value("pixpress_images_quarantined_total")
    await rig.worker.handle(_task(rig.host.url("/img/again.jpg"), 1), await rig.message(deliveries=1))
    suspect = await rig.channel.get_queue(Queue.IMAGES_SUSPECT.value)
    moved = await suspect.get(timeout=10, no_ack=True)
    assert moved is not None and ImageTask.model_validate_json(moved.body).row == 1
    assert processed() == processed_before
    assert value("pixpress_images_quarantined_total") == quarantined + 1
    assert rig.host.hits["again.jpg"] == 0
