"""Handles one ImageTask: download, compress off the event loop, store, report; retries go through the broker."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import Executor
from dataclasses import dataclass

import aiohttp
import structlog
from aio_pika.abc import AbstractIncomingMessage

from services.compressor.compress import Compressed, ImageRejected, compress
from services.compressor.download import DownloadError, DownloadLimits, download
from shared import metrics
from shared.broker import DELIVERY_LIMIT, Broker, delivery_count
from shared.messages import ImageTask, RoutingKey
from shared.reasons import short_reason
from shared.storage import Storage

log = structlog.get_logger()


def output_key(task: ImageTask, extension: str) -> str:
    """Deterministic, so a redelivered task overwrites its own output instead of adding a copy."""
    return f"images/{task.request_id}/{task.row:07d}-{task.index:02d}.{extension}"


def retry_delay_ms(base_ms: int, attempt: int) -> int:
    """Exponential backoff with jitter, rounded to 10% steps so only a few delay queues ever exist."""
    jitter = random.choice((1.0, 1.1, 1.2, 1.3))
    return int(base_ms * (2 ** (attempt - 1)) * jitter)


@dataclass
class CompressorWorker:
    broker: Broker
    storage: Storage
    session: aiohttp.ClientSession
    executor: Executor
    limits: DownloadLimits
    quality: int
    max_pixels: int
    max_frames: int
    max_attempts: int
    retry_base_ms: int
    jpeg_fast_path: bool = True

    async def handle(self, task: ImageTask, message: AbstractIncomingMessage) -> None:
        """Tasks from ``compressor.images``, taken ``prefetch`` at a time.

        A redelivery means the compressor that held this task died or failed with it. If the task itself is
        what kills compressors, processing it here again would kill the innocent tasks prefetched alongside it
        as well (each crash counts against their delivery limit too). So a redelivered task is moved to the
        suspect queue, where every compressor takes one task at a time: there a crash hurts only its culprit.
        """
        structlog.contextvars.bind_contextvars(row=task.row, index=task.index, attempt=task.attempt)
        deliveries = delivery_count(message)
        if deliveries >= 1:
            log.warning("image_quarantined", deliveries=deliveries)
            await self.broker.publish(RoutingKey.IMAGE_SUSPECT, task)
            metrics.IMAGES_QUARANTINED.inc()
            return
        await self._process(task)

    async def handle_suspect(self, task: ImageTask, message: AbstractIncomingMessage) -> None:
        """Tasks from ``compressor.images.suspect``, one at a time (prefetch 1)."""
        structlog.contextvars.bind_contextvars(row=task.row, index=task.index, attempt=task.attempt, suspect=True)
        deliveries = delivery_count(message)
        if deliveries >= DELIVERY_LIMIT - 1:
            # it was taken, alone, by compressors that died before acking it (or failed with it, e.g. storage
            # down longer than the backoff spans), again and again. Settle it as failed rather than let the
            # broker dead-letter it silently and leave its request Processing until the sweeper re-issues it
            # into the same fate.
            attempts = deliveries + 1  # its deliveries here, plus the one that sent it here
            reason = f"processing failed or was interrupted {attempts} times; giving up on this image"
            await self._fail(task, reason, 0)
            return
        await self._process(task)

    async def _process(self, task: ImageTask) -> None:
        try:
            data = await metrics.timed("download", download(self.session, task.url, self.limits))
        except DownloadError as exc:
            if exc.transient and task.attempt < self.max_attempts:
                delay = retry_delay_ms(self.retry_base_ms, task.attempt)
                log.info("image_retry_scheduled", reason=exc.reason, delay_ms=delay)
                retry = task.model_copy(update={"attempt": task.attempt + 1})
                await self.broker.publish_delayed(RoutingKey.IMAGE_TODO, retry, delay)
                metrics.IMAGE_RETRIES.inc()
                return
            suffix = f" (after {task.attempt} attempts)" if exc.transient else ""
            await self._fail(task, f"download failed: {exc.reason}{suffix}", 0)
            return
        loop = asyncio.get_running_loop()
        try:
            result: Compressed = await loop.run_in_executor(
                self.executor,
                _compress_job,
                data,
                self.quality,
                self.max_pixels,
                self.max_frames,
                self.jpeg_fast_path,
            )
        except ImageRejected as exc:
            # bytes_in counts compressed images only: a rejected download saved nothing, and counting it
            # would inflate the request's savings_percent
            await self._fail(task, str(exc), 0)
            return
        key = output_key(task, result.extension)
        await metrics.timed("store", self.storage.put_bytes(key, result.data, result.content_type))
        done = task.settled(
            ok=True,
            output_url=self.storage.public_url(key),
            bytes_in=len(data),
            bytes_out=len(result.data),
            codec=result.codec,
        )
        await metrics.timed("publish", self.broker.publish(RoutingKey.IMAGE_DONE, done))
        metrics.image_ok(len(data), len(result.data), result.codec)
        log.info("image_done", bytes_in=len(data), bytes_out=len(result.data), format=result.format, codec=result.codec)

    async def _fail(self, task: ImageTask, reason: str, bytes_in: int) -> None:
        failure = metrics.failure_reason(reason)  # from the whole text: shortening may cut what tells it apart
        reason = short_reason(reason)  # it may quote a remote server or the file: one printable line, no markup
        log.info("image_failed", reason=reason, failure=failure)
        failed = task.settled(ok=False, error=reason, bytes_in=bytes_in)
        await metrics.timed("publish", self.broker.publish(RoutingKey.IMAGE_DONE, failed))
        metrics.image_failed(failure)


def _compress_job(data: bytes, quality: int, max_pixels: int, max_frames: int, jpeg_fast_path: bool) -> Compressed:
    with metrics.stage_timer("decode_encode"):  # here, in the codec thread: not the wait for a free thread
        return compress(
            data, quality=quality, max_pixels=max_pixels, max_frames=max_frames, jpeg_fast_path=jpeg_fast_path
        )
