"""shared.storage against the real MinIO, through a proxy that plays MinIO dying (tests/support/proxy.py).

minio-py retries a request 5 times within about 6 s by itself; an outage longer than that is what
``PIXPRESS_STORAGE_RETRY_SECONDS`` is for. Each test waits until the proxy has dropped more connections than
minio-py's own tries (so at least one of ours failed) before MinIO "comes back".
"""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from minio import Minio
from minio.error import S3Error
from pydantic import SecretStr
from urllib3.exceptions import HTTPError

from shared.broker import Broker, delivery_count
from shared.messages import ImageTask, Queue, RoutingKey
from shared.settings import Settings
from shared.storage import Storage, is_transient
from testkit.stack import amqp_url
from tests.support.photos import photo_bytes
from tests.support.proxy import FaultProxy
from tests.support.scratch import minio_client

MINIO_TRIES = 6  # one request and urllib3's 5 retries (minio.Minio's default http client)
SETTINGS = Settings()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    host, port = SETTINGS.s3_endpoint.rsplit(":", 1)
    running = FaultProxy(host, int(port))
    await running.start()
    yield running
    await running.stop()


def storage_behind(proxy: FaultProxy, retry_seconds: float = 60.0, **overrides: object) -> Storage:
    return Storage(
        SETTINGS.model_copy(
            update={"s3_endpoint": f"127.0.0.1:{proxy.port}", "storage_retry_seconds": retry_seconds, **overrides}
        )
    )


def direct() -> Minio:
    """A client straight to MinIO, to check what really got stored."""
    return minio_client(SETTINGS)


def stored(key: str) -> bytes:
    response = direct().get_object(SETTINGS.s3_bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def unique_prefix() -> str:
    return f"uploads/storage-test-{uuid.uuid4()}"


async def test_a_write_cut_mid_request_is_sent_again_from_the_start_of_its_stream(stack: str, proxy: FaultProxy):
    data = photo_bytes("coffee.png")
    stream = io.BytesIO(b"HEADER-NOT-PART-OF-IT" + data)
    stream.seek(21)  # the object starts here, not at 0: a retry must come back to this position
    key = f"{unique_prefix()}/photo.png"
    proxy.cutting = True
    write = asyncio.create_task(storage_behind(proxy).put_stream(key, stream, len(data), "image/png"))
    await proxy.wait_cut(MINIO_TRIES + 1)  # minio-py gave up once and the stream was read to its end
    assert not write.done()
    proxy.cutting = False
    await asyncio.wait_for(write, timeout=30)
    assert stored(key) == data
    assert proxy.passed >= 1


async def test_a_read_retried_after_an_outage_downloads_the_whole_object(stack: str, proxy: FaultProxy, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    key = f"{unique_prefix()}/input.csv"
    direct().put_object(SETTINGS.s3_bucket, key, io.BytesIO(data), len(data))
    target = tmp_path / "input.csv"
    proxy.cutting = True
    read = asyncio.create_task(storage_behind(proxy).download_to_file(key, str(target)))
    await proxy.wait_cut(MINIO_TRIES + 1)
    proxy.cutting = False
    await asyncio.wait_for(read, timeout=30)
    assert target.read_bytes() == data
    assert os.listdir(tmp_path) == ["input.csv"]  # no part file left behind


async def test_permanent_errors_are_raised_at_once(stack: str, proxy: FaultProxy, tmp_path):
    missing = f"{unique_prefix()}/missing.csv"
    with pytest.raises(S3Error) as refused:
        await storage_behind(proxy).download_to_file(missing, str(tmp_path / "x"))
    assert refused.value.code == "NoSuchKey" and not is_transient(refused.value)
    wrong_key = storage_behind(proxy, s3_secret_key=SecretStr("not-the-secret"))
    with pytest.raises(S3Error) as denied:
        await wrong_key.put_bytes(f"{unique_prefix()}/x", b"x", "text/plain")
    assert denied.value.code == "SignatureDoesNotMatch" and not is_transient(denied.value)
    assert proxy.cut == 0 and proxy.passed == 2  # one connection each: nobody tried again
    assert os.listdir(tmp_path) == []


async def test_retries_stop_when_the_retry_time_is_up(stack: str, proxy: FaultProxy):
    proxy.cutting = True
    with pytest.raises(HTTPError) as gave_up:
        await storage_behind(proxy, retry_seconds=8).put_bytes(f"{unique_prefix()}/x", b"x", "text/plain")
    assert is_transient(gave_up.value)
    assert proxy.cut > MINIO_TRIES  # tried again after minio-py's own tries, then stopped
    proxy.cut = 0
    with pytest.raises(HTTPError):
        await storage_behind(proxy, retry_seconds=0).put_bytes(f"{unique_prefix()}/x", b"x", "text/plain")
    assert proxy.cut == MINIO_TRIES  # 0 s: minio-py's tries only


async def test_the_message_stays_unacked_while_storage_is_away(stack: str, proxy: FaultProxy, vhost: str):
    """A consumer whose handler writes to storage during an outage holds its message: not redelivered, not
    requeued, not dead-lettered; once storage is back the handler finishes and the message is acked."""
    storage = storage_behind(proxy)
    broker = Broker(amqp_url(vhost))
    await broker.connect(wait_seconds=10)
    deliveries: list[int] = []
    done = asyncio.Event()
    key = f"{unique_prefix()}/out.jpg"

    async def handle(task: ImageTask, message: AbstractIncomingMessage) -> None:
        deliveries.append(delivery_count(message))
        await storage.put_bytes(key, task.url.encode(), "text/plain")
        done.set()

    proxy.cutting = True
    try:
        await broker.consume(Queue.IMAGES, ImageTask, handle, prefetch=1)
        await broker.publish(
            RoutingKey.IMAGE_TODO, ImageTask(request_id="r", product_id="r:1", row=1, index=0, url="written-late")
        )
        await proxy.wait_cut(MINIO_TRIES + 1)
        assert await ready_messages(vhost, Queue.IMAGES.value) == 0  # held by the consumer, not back in the queue
        proxy.cutting = False
        await asyncio.wait_for(done.wait(), timeout=30)
    finally:
        await broker.stop_consuming()
        await broker.close()
    assert deliveries == [0]
    assert stored(key) == b"written-late"
    assert await ready_messages(vhost, Queue.IMAGES.value) == 0
    assert await ready_messages(vhost, f"{Queue.IMAGES.value}.dlq") == 0


async def ready_messages(vhost: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url(vhost))
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
