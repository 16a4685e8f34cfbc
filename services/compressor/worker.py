"""Handles one ImageTask: download, compress off the event loop, store, report; retries go through the broker."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass

import aiohttp
import structlog
from aio_pika.abc import AbstractIncomingMessage

from services.compressor.compress import Compressed, ImageRejected, compress
from services.compressor.output_cache import (
    Expiring,
    Hit,
    Output,
    OutputCache,
    output_extensions,
    shared_object_metadata,
)
from services.compressor.result_batches import ResultBatches
from shared import metrics
from shared.broker import DELIVERY_LIMIT, Broker, delivery_count
from shared.cache import CacheKind, is_shared_object, url_record_id
from shared.download import DownloadError, DownloadLimits, Fetched, Validators, fetch
from shared.messages import ImageBatch, ImageResult, ImageTask, RoutingKey, SourceRecord
from shared.reasons import short_reason
from shared.storage import Storage

log = structlog.get_logger()
# while a batch is processed, its tasks' results are gathered here instead of being published one by one, each
# with what its metrics count once the broker has confirmed it
_Counted = tuple[ImageResult, Callable[[], None]]
_collected: ContextVar[list[_Counted] | None] = ContextVar("collected_results", default=None)


def output_key(task: ImageTask, extension: str) -> str:
    """Deterministic, so a redelivered task overwrites its own output instead of adding a copy."""
    return f"images/{task.request_id}/{task.row:07d}-{task.index:02d}.{extension}"


def retry_delay_ms(base_ms: int, attempt: int) -> int:
    """Exponential backoff with jitter, rounded to 10% steps so only a few delay queues ever exist."""
    jitter = random.choice((1.0, 1.1, 1.2, 1.3))
    return int(base_ms * (2 ** (attempt - 1)) * jitter)


@dataclass(frozen=True)
class _Shared:
    """A download whose output goes under its content key (unless that object is ``expiring``)."""

    digest: str
    fetched: Fetched
    expiring: bool


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
    cache: OutputCache | None = None  # None: PIXPRESS_CACHE=off
    # None: one image.done message per result (PIXPRESS_RESULT_BATCH=1), as compressors before batching did
    results: ResultBatches | None = None
    batch_concurrency: int = 8  # images of batches in progress at once (PIXPRESS_COMPRESSOR_PREFETCH)

    def __post_init__(self) -> None:
        self._batch_slots = asyncio.Semaphore(self.batch_concurrency)

    async def handle(self, task: ImageTask, message: AbstractIncomingMessage) -> None:
        """Tasks from ``compressor.images``, taken ``prefetch`` at a time.

        A redelivery means the compressor that held this task died or failed with it. If the task itself is
        what kills compressors, processing it here again would kill the innocent tasks prefetched alongside it
        as well (each crash counts against their delivery limit too). So a redelivered task is moved to the
        suspect queue, where every compressor takes one task at a time: there a crash hurts only its culprit.
        """
        structlog.contextvars.bind_contextvars(row=task.row, index=task.index, attempt=task.attempt)
        with self._working():
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
        with self._working():
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

    def _working(self) -> AbstractContextManager[None]:
        """While a task is handled, results finishing elsewhere may wait for its result to share their message."""
        return self.results.working() if self.results is not None else nullcontext()

    async def handle_batch(self, batch: ImageBatch, message: AbstractIncomingMessage) -> None:
        """Tasks from ``compressor.images.batch``: known URLs, revalidated together, results published together.

        A redelivered batch (its compressor died or failed with it) is not processed again but split into single
        tasks on the suspect queue, as a redelivered single task would be (``handle``): if one of them is what kills
        compressors, it takes no innocent with it there.
        """
        structlog.contextvars.bind_contextvars(request_id=batch.tasks[0].request_id, batch=len(batch.tasks))
        deliveries = delivery_count(message)
        if deliveries >= 1:
            log.warning("image_batch_split", deliveries=deliveries)
            await self.broker.publish_many(RoutingKey.IMAGE_SUSPECT, batch.tasks)
            return
        await self.process_batch(batch)

    async def process_batch(self, batch: ImageBatch) -> None:
        """Every task of the batch at once (at most ``batch_slots`` at a time, so bodies of changed images cannot
        pile up), then one bulk publish of their results. A task that raises fails the whole batch, which is then
        redelivered and split; results gathered until then are dropped, and their tasks done again."""
        results: list[_Counted] = []
        token = _collected.set(results)
        try:
            async with asyncio.TaskGroup() as group:
                for task in batch.tasks:
                    group.create_task(self._process_slot(task))
        finally:
            _collected.reset(token)
        settled = [r for r, _ in results]
        if self.results is not None:
            await self.results.publish(settled)
        else:
            await metrics.timed("publish", self.broker.publish_many(RoutingKey.IMAGE_DONE, settled))
        for _result, count in results:
            count()

    async def _process_slot(self, task: ImageTask) -> None:
        structlog.contextvars.bind_contextvars(row=task.row, index=task.index, attempt=task.attempt)
        async with self._batch_slots:
            await self._process(task)

    async def _emit(self, result: ImageResult, count: Callable[[], None]) -> None:
        """Publish a result (with others finishing close to it, ``results``), or hand it to the batch being
        processed (``process_batch``); ``count`` updates the metrics once the broker has confirmed the message
        holding the result, so an image counts once, when it is settled."""
        collected = _collected.get()
        if collected is not None:
            collected.append((result, count))
            return
        if self.results is not None:
            await self.results.submit(result)
        else:
            await metrics.timed("publish", self.broker.publish(RoutingKey.IMAGE_DONE, result))
        count()

    async def _process(self, task: ImageTask) -> None:
        """Download (conditionally, when the URL is known), reuse a cached output or compress, store, report.

        With the cache off (``cache`` None) this is the pipeline as it was: every image downloaded and compressed,
        stored under its request.
        """
        target = self.cache.revalidation_target(task.known) if self.cache is not None else None
        try:
            if target is not None and task.known is not None:
                validators = Validators(task.known.etag, task.known.last_modified)
                fetched = await metrics.timed("download", fetch(self.session, task.url, self.limits, validators))
                if fetched.not_modified:
                    if await self._reuse_revalidated(task, target, task.known.size):
                        return
                    # the object is gone: the bytes again
                    fetched = await metrics.timed("download", fetch(self.session, task.url, self.limits))
            else:
                fetched = await metrics.timed("download", fetch(self.session, task.url, self.limits))
        except DownloadError as exc:
            await self._download_failed(task, exc)
            return
        if self.cache is None:
            await self._compress_and_store(task, fetched.body, None)
            return
        digest = hashlib.sha256(fetched.body).hexdigest()
        found = await self.cache.find(digest, fetched.body)
        if isinstance(found, Hit):
            source = self._source_record(task, digest, fetched, found.key)
            await self._publish_output(task, found, len(fetched.body), CacheKind.SAME_BYTES, source)
            return
        await self._compress_and_store(task, fetched.body, _Shared(digest, fetched, expiring=found is not None))

    async def _reuse_revalidated(self, task: ImageTask, key: str, bytes_in: int) -> bool:
        """After a 304: reuse the output its validators point to, if it can still be reused."""
        assert self.cache is not None
        found = await self.cache.check(key)
        if not isinstance(found, Hit):
            log.info("cache_revalidated_output_unusable", key=key, expiring=found is not None)
            return False
        await self._publish_output(task, found, bytes_in, CacheKind.REVALIDATED, None)
        return True

    async def _download_failed(self, task: ImageTask, exc: DownloadError) -> None:
        if exc.transient and task.attempt < self.max_attempts:
            delay = retry_delay_ms(self.retry_base_ms, task.attempt)
            log.info("image_retry_scheduled", reason=exc.reason, delay_ms=delay)
            retry = task.model_copy(update={"attempt": task.attempt + 1})
            await self.broker.publish_delayed(RoutingKey.IMAGE_TODO, retry, delay)
            metrics.IMAGE_RETRIES.inc()
            return
        suffix = f" (after {task.attempt} attempts)" if exc.transient else ""
        await self._fail(task, f"download failed: {exc.reason}{suffix}", 0)

    async def _compress_and_store(self, task: ImageTask, data: bytes, shared: _Shared | None) -> None:
        """Run the codec and store its output: under the content key when ``shared`` (unless that object is
        expiring, see shared/cache.py), else under the request's own key."""
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
        source: SourceRecord | None = None
        if shared is not None and self.cache is not None and not shared.expiring:
            candidate = self.cache.key_for(shared.digest, result.extension)
            # find() looked under the extensions the magic bytes allow; should the codec have chosen another, that
            # key is checked here, so an expiring object is never written again
            looked = result.extension in output_extensions(data)
            if looked or not isinstance(await self.cache.check(candidate), Expiring):
                key = candidate
                source = self._source_record(task, shared.digest, shared.fetched, key)
        metadata = shared_object_metadata(result.codec, result.source_format) if is_shared_object(key) else None
        await metrics.timed("store", self.storage.put_bytes(key, result.data, result.content_type, metadata))
        output = Output(key, len(result.data), result.codec, result.source_format, result.format)
        await self._publish_output(task, output, len(data), None, source)

    def _source_record(self, task: ImageTask, digest: str, fetched: Fetched, key: str) -> SourceRecord | None:
        """What the aggregator should remember about this URL: only when its origin sent validators (without them
        there is nothing to revalidate with) and only when it differs from what the task says is remembered."""
        if not fetched.validators:
            return None
        record = SourceRecord(
            sha256=digest,
            size=len(fetched.body),
            etag=fetched.validators.etag,
            last_modified=fetched.validators.last_modified,
            object_key=key,
            url_id=url_record_id(task.url),
        )
        if task.known is not None and task.known == record.model_copy(update={"url_id": None}):
            return None
        return record

    async def _publish_output(
        self, task: ImageTask, output: Output, bytes_in: int, cache: CacheKind | None, source: SourceRecord | None
    ) -> None:
        key, bytes_out, codec = output.key, output.size, output.codec
        kind = cache.value if cache is not None else None
        codec_run = None if cache is not None else codec  # a reused output ran no codec now
        await self._emit(
            task.settled(
                ok=True,
                output_url=self.storage.public_url(key),
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                codec=codec,
                format_in=output.format_in,
                format_out=output.format_out,
                cached=cache is not None,
                cache=kind,
                cache_object=key if is_shared_object(key) else None,
                source=source,
            ),
            lambda: metrics.image_ok(bytes_in, bytes_out, codec_run, kind),
        )
        log.info(
            "image_done",
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            format=output.format_out,
            codec=codec,
            cached=cache is not None,
            cache=kind,
            key=key,
        )

    async def _fail(self, task: ImageTask, reason: str, bytes_in: int) -> None:
        failure = metrics.failure_reason(reason)  # from the whole text: shortening may cut what tells it apart
        reason = short_reason(reason)  # it may quote a remote server or the file: one printable line, no markup
        log.info("image_failed", reason=reason, failure=failure)
        await self._emit(task.settled(ok=False, error=reason, bytes_in=bytes_in), lambda: metrics.image_failed(failure))


def _compress_job(data: bytes, quality: int, max_pixels: int, max_frames: int, jpeg_fast_path: bool) -> Compressed:
    with metrics.stage_timer("decode_encode"):  # here, in the codec thread: not the wait for a free thread
        return compress(
            data, quality=quality, max_pixels=max_pixels, max_frames=max_frames, jpeg_fast_path=jpeg_fast_path
        )
