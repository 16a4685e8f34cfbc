"""Compressor process: consumes image tasks with bounded prefetch and a pool of codec threads."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import aiohttp

from services.compressor.frame_budget import set_pillow_backstop
from services.compressor.output_cache import OutputCache
from services.compressor.result_batches import ResultBatches
from services.compressor.worker import CompressorWorker
from shared import metrics
from shared.broker import Broker
from shared.download import download_limits, download_session
from shared.logging import configure_logging
from shared.messages import ImageBatch, ImageTask, Queue
from shared.runtime import install_stop_signals, start_health_server
from shared.settings import get_settings
from shared.storage import Storage


async def run() -> None:
    settings = get_settings()
    log = configure_logging("compressor", settings.log_level)
    metrics.register("compressor")
    stop = install_stop_signals()
    set_pillow_backstop(settings.max_image_pixels)
    broker = Broker(settings.amqp_url.get_secret_value(), settings.exchange)
    storage = Storage(settings)
    await storage.ensure_bucket()
    await broker.connect()
    executor = ThreadPoolExecutor(max_workers=settings.compressor_workers, thread_name_prefix="codec")
    async with (
        download_session(settings, connections=64) as session,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as storage_http,
    ):
        cache = (
            OutputCache(storage, storage_http, settings.jpeg_quality, settings.jpeg_fast_path, settings.retention_days)
            if settings.cache
            else None
        )
        worker = CompressorWorker(
            broker=broker,
            storage=storage,
            session=session,
            executor=executor,
            limits=download_limits(settings),
            quality=settings.jpeg_quality,
            max_pixels=settings.max_image_pixels,
            max_frames=settings.max_image_frames,
            max_attempts=settings.image_max_attempts,
            retry_base_ms=settings.retry_base_delay_ms,
            jpeg_fast_path=settings.jpeg_fast_path,
            cache=cache,
            results=(
                ResultBatches(broker, settings.result_batch, settings.result_batch_delay_ms / 1000)
                if settings.result_batch > 1
                else None
            ),
            batch_concurrency=settings.compressor_prefetch,
        )

        async def check() -> dict[str, bool]:
            return {"broker": broker.connected, "storage": await storage.healthy()}

        health = await start_health_server(check, settings.health_host, settings.health_port)
        await broker.consume(Queue.IMAGES, ImageTask, worker.handle, settings.compressor_prefetch)
        await broker.consume(Queue.IMAGES_SUSPECT, ImageTask, worker.handle_suspect, prefetch=1)
        await broker.consume(Queue.IMAGES_BATCH, ImageBatch, worker.handle_batch, prefetch=2)
        log.info(
            "compressor_started",
            prefetch=settings.compressor_prefetch,
            codec_threads=settings.compressor_workers,
            jpeg_fast_path=settings.jpeg_fast_path,
            cache=settings.cache,
            cache_policy=cache.fingerprint if cache is not None else None,
            result_batch=settings.result_batch,
            result_batch_delay_ms=settings.result_batch_delay_ms,
        )
        await stop.wait()
        log.info("compressor_stopping")
        await broker.stop_consuming()
        await broker.close()
        if health is not None:
            await health.cleanup()
    executor.shutdown(wait=True)
    log.info("compressor_stopped")


def main() -> None:
    asyncio.run(run())
