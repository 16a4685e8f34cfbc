"""Every Prometheus metric pixpress exports, in one place: its name, its labels and what moves it.

Each service exposes ``GET /metrics`` (Prometheus text format, the official ``prometheus-client``) on the port
it already answers ``/healthz`` on: ingest on its API port, the workers on ``PIXPRESS_HEALTH_PORT``. A service
registers only its own metrics (:func:`register`), plus the library's process metrics
(``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ...) and Python's GC and platform info.

Metrics by service (docs/observability.md has the table operators read):

* ingest: ``pixpress_uploads_total{outcome}`` (accepted | refused | error), and
  ``pixpress_requests_finished_total`` / ``pixpress_request_seconds`` for a CSV its fan-out could not use;
* compressor: ``pixpress_images_processed_total{outcome}`` (ok | failed), ``pixpress_image_failures_total{reason}``
  (:data:`FAILURE_REASONS`), ``pixpress_image_bytes_in_total`` / ``_out_total``, ``pixpress_images_codec_total
  {codec}`` (dct | pillow), ``pixpress_stage_seconds{stage}``, ``pixpress_image_retries_total``,
  ``pixpress_images_quarantined_total``;
* aggregator: ``pixpress_results_recorded_total{outcome}``, ``pixpress_requests_finished_total{status}``,
  ``pixpress_request_seconds``, ``pixpress_open_requests``, ``pixpress_oldest_open_request_age_seconds``;
* notifier: ``pixpress_webhook_attempts_total{outcome}`` (delivered | retry | dead).

Exactness: an image counts in ``pixpress_images_processed_total`` when the compressor's result for it is
confirmed by RabbitMQ, once, in the compressor that published it: transient retries (parked in a delay queue)
and moves to the suspect queue publish no result and count nothing. What it cannot see is a result published
twice: a compressor killed between the confirm and its ack, or a task the sweeper re-issued because its request
went quiet, is processed (and counted) again. ``pixpress_results_recorded_total`` counts what the aggregator
newly inserted, deduplicated by the result's key, so it is exact even then.

Every label set is created at zero when the metric is registered, so a series exists (and ``rate`` and
``increase`` see its first step) before the first event, and a dashboard shows 0 rather than "no data".
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from shared.api_models import WebhookState
from shared.cache import CacheKind

T = TypeVar("T")

METRICS_PATH = "/metrics"
PROMETHEUS_TEXT = CONTENT_TYPE_LATEST  # the text format's media type with its version, from the library

# ``*_created`` series double the output and no dashboard or alert here uses them
disable_created_metrics()

UPLOAD_OUTCOMES = ("accepted", "refused", "error")
IMAGE_OUTCOMES = ("ok", "failed")
CODECS = ("dct", "pillow")
CACHE_KINDS = tuple(kind.value for kind in CacheKind)
STAGES = ("download", "decode_encode", "store", "publish")
REQUEST_STATUSES = ("Completed", "Failed")
WEBHOOK_OUTCOMES = ("delivered", "retry", "dead")
# The fixed set of image failure reasons; :func:`failure_reason` maps the compressor's reason text onto it.
FAILURE_REASONS = (
    "download_4xx",  # the image host answered 4xx (not 408/429): the URL is wrong, retrying cannot help
    "download_transient",  # timeouts, 408/429/5xx, connection errors, still failing after the last attempt
    "not_an_image",  # the bytes decode as no image we take (HTML, empty body, unsupported format)
    "too_large",  # over the download byte limit, the pixel budget, the frame limit, or the codec's memory
    "corrupt",  # an image header or data the codec cannot read (truncated, damaged)
    "interrupted",  # compressors died or failed with it on every delivery from the suspect queue
    "other",  # anything else: a URL the SSRF guard refuses, too many redirects, an invalid URL
)

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_REQUEST_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

# Created unregistered: :func:`register` adds to the default registry only what the running service moves.
UPLOADS = Counter(
    "pixpress_uploads",
    "POST /upload answers: accepted (2xx, an idempotent replay included), refused (4xx), error (5xx).",
    ["outcome"],
    registry=None,
)
IMAGES_PROCESSED = Counter(
    "pixpress_images_processed",
    "Images whose result the compressor published (confirmed by RabbitMQ): ok or failed.",
    ["outcome"],
    registry=None,
)
IMAGE_FAILURES = Counter(
    "pixpress_image_failures", "Failed images by reason (a fixed set, see FAILURE_REASONS).", ["reason"], registry=None
)
IMAGE_BYTES_IN = Counter(
    "pixpress_image_bytes_in", "Bytes downloaded of images compressed successfully.", registry=None
)
IMAGE_BYTES_OUT = Counter("pixpress_image_bytes_out", "Bytes stored of compressed images.", registry=None)
IMAGES_CODEC = Counter(
    "pixpress_images_codec",
    "Images compressed, by path: dct (JPEG re-quantised in the DCT domain) or pillow (decoded to pixels).",
    ["codec"],
    registry=None,
)
IMAGES_CACHED = Counter(
    "pixpress_images_cached",
    "Images whose output was reused without running a codec: revalidated (the origin answered 304) or same_bytes "
    "(downloaded bytes already compressed before); docs/cache.md.",
    ["kind"],
    registry=None,
)
IMAGE_RETRIES = Counter(
    "pixpress_image_retries", "Transient download failures parked in a delay queue for another attempt.", registry=None
)
IMAGES_QUARANTINED = Counter(
    "pixpress_images_quarantined",
    "Redelivered image tasks moved to the suspect queue (their compressor died or failed with them).",
    registry=None,
)
STAGE_SECONDS = Histogram(
    "pixpress_stage_seconds",
    "Time of one run of a stage of an image, failed runs included: download (per attempt), decode_encode "
    "(codec thread time, not the wait for a free thread), store (MinIO PUT, its retries included), publish (one "
    "confirmed result message: results that finish close together, and those of a batch of known URLs, share one).",
    ["stage"],
    buckets=_SECONDS_BUCKETS,
    registry=None,
)
RESULTS_RECORDED = Counter(
    "pixpress_results_recorded",
    "Image results the aggregator recorded for the first time (redelivered duplicates not counted).",
    ["outcome"],
    registry=None,
)
REQUESTS_FINISHED = Counter(
    "pixpress_requests_finished",
    "Requests that reached their final status (exactly once each).",
    ["status"],
    registry=None,
)
REQUEST_SECONDS = Histogram(
    "pixpress_request_seconds",
    "From upload to final status, per finished request.",
    buckets=_REQUEST_BUCKETS,
    registry=None,
)
OPEN_REQUESTS = Gauge(
    "pixpress_open_requests", "Requests Queued or Processing, as of the aggregator's last sweep.", registry=None
)
OLDEST_OPEN_REQUEST_AGE = Gauge(
    "pixpress_oldest_open_request_age_seconds",
    "Age of the oldest request still Queued or Processing at the aggregator's last sweep (0: none open).",
    registry=None,
)
WEBHOOK_ATTEMPTS = Counter(
    "pixpress_webhook_attempts",
    "Webhook POSTs: delivered (2xx), retry (failed, another attempt scheduled), dead (failed, the last attempt).",
    ["outcome"],
    registry=None,
)

_LABELS: dict[Counter | Gauge | Histogram, tuple[str, ...]] = {
    UPLOADS: UPLOAD_OUTCOMES,
    IMAGES_PROCESSED: IMAGE_OUTCOMES,
    IMAGE_FAILURES: FAILURE_REASONS,
    IMAGES_CODEC: CODECS,
    IMAGES_CACHED: CACHE_KINDS,
    STAGE_SECONDS: STAGES,
    RESULTS_RECORDED: IMAGE_OUTCOMES,
    REQUESTS_FINISHED: REQUEST_STATUSES,
    WEBHOOK_ATTEMPTS: WEBHOOK_OUTCOMES,
}
_FINISHED = (REQUESTS_FINISHED, REQUEST_SECONDS)
SERVICE_METRICS: dict[str, tuple[Counter | Gauge | Histogram, ...]] = {
    "ingest": (UPLOADS, *_FINISHED),
    "compressor": (
        IMAGES_PROCESSED,
        IMAGE_FAILURES,
        IMAGE_BYTES_IN,
        IMAGE_BYTES_OUT,
        IMAGES_CODEC,
        IMAGES_CACHED,
        IMAGE_RETRIES,
        IMAGES_QUARANTINED,
        STAGE_SECONDS,
    ),
    "aggregator": (RESULTS_RECORDED, *_FINISHED, OPEN_REQUESTS, OLDEST_OPEN_REQUEST_AGE),
    "notifier": (WEBHOOK_ATTEMPTS,),
}


def register(service: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Export ``service``'s metrics from this process, every label value at zero."""
    for metric in SERVICE_METRICS[service]:
        for value in _LABELS.get(metric, ()):
            metric.labels(value)
        registry.register(metric)


def metrics_routes(registry: CollectorRegistry = REGISTRY) -> list[web.RouteDef]:
    """``GET /metrics`` in the Prometheus text format (ingest documents it in services/ingest/routes.py)."""

    async def metrics(_request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = PROMETHEUS_TEXT
        return response

    return [web.get(METRICS_PATH, metrics)]


@web.middleware
async def count_uploads(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Counts the answers to ``POST /upload``; outermost, so it sees what the client gets (problem+json included)."""
    if request.method != "POST" or request.path != "/upload":
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        upload_answered(exc.status)
        raise
    except Exception:
        upload_answered(500)
        raise
    upload_answered(response.status)
    return response


# --- what the services call: one line at the place the event happens ----------------------------------------


def upload_answered(status: int) -> None:
    UPLOADS.labels("accepted" if status < 400 else "refused" if status < 500 else "error").inc()


def image_ok(bytes_in: int, bytes_out: int, codec: str | None, cache: str | None = None) -> None:
    """A compressed image's result is confirmed by the broker: ``codec`` is the path that ran now (None when an
    earlier output was reused), ``cache`` how it was reused (``revalidated`` or ``same_bytes``, docs/cache.md)."""
    IMAGES_PROCESSED.labels("ok").inc()
    IMAGE_BYTES_IN.inc(bytes_in)
    IMAGE_BYTES_OUT.inc(bytes_out)
    if codec is not None:
        IMAGES_CODEC.labels(codec).inc()
    if cache is not None:
        IMAGES_CACHED.labels(cache).inc()


def image_failed(reason: str) -> None:
    """A failed image's result is confirmed by the broker; ``reason`` is from :func:`failure_reason`."""
    IMAGES_PROCESSED.labels("failed").inc()
    IMAGE_FAILURES.labels(reason).inc()


def results_recorded(ok: int, failed: int) -> None:
    RESULTS_RECORDED.labels("ok").inc(ok)
    RESULTS_RECORDED.labels("failed").inc(failed)


def request_finished(status: str, created_at: datetime, finished_at: datetime) -> None:
    """Called by the one writer whose conditional update moved the request to its final status."""
    REQUESTS_FINISHED.labels(status).inc()
    REQUEST_SECONDS.observe(max(0.0, (finished_at - created_at).total_seconds()))


def open_requests_seen(count: int, oldest: datetime | None, now: datetime) -> None:
    OPEN_REQUESTS.set(count)
    OLDEST_OPEN_REQUEST_AGE.set(0.0 if oldest is None else max(0.0, (now - oldest).total_seconds()))


_WEBHOOK_OUTCOMES = {WebhookState.DELIVERED: "delivered", WebhookState.RETRYING: "retry", WebhookState.DEAD: "dead"}


def webhook_attempted(state: WebhookState) -> None:
    """``state`` is the delivery state the notifier recorded after the attempt."""
    WEBHOOK_ATTEMPTS.labels(_WEBHOOK_OUTCOMES[state]).inc()


async def timed(stage: str, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, observing its duration (also when it raises) as one run of ``stage``."""
    with stage_timer(stage):
        return await awaitable


@contextmanager
def stage_timer(stage: str) -> Iterator[None]:
    """Observe the block's duration, also when it raises, as one run of ``stage``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)


# --- the fixed failure-reason set --------------------------------------------------------------------------

# First match wins. Each pattern matches the text the compressor itself writes (services/compressor: worker.py,
# download.py, compress.py; shared/url_guard.py for refused URLs): tests/test_metrics.py makes every one of these
# failures happen for real and checks the reason it lands in, so a reworded message cannot drift into "other".
_REASON_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern))
    for reason, pattern in (
        ("interrupted", r"^processing failed or was interrupted"),
        ("download_transient", r"^download failed: .*\(after \d+ attempts?\)$"),
        ("download_4xx", r"^download failed: HTTP 4\d\d\b"),
        ("too_large", r"^download failed: image is (larger than the limit|\d+ bytes; the limit)"),
        ("not_an_image", r"^download failed: empty response body"),
        ("other", r"^download failed: "),
        ("not_an_image", r"^(not an image|unsupported image format|empty body)"),
        ("too_large", r"(pixel limit|frame limit|more memory than the compressor has)"),
        ("corrupt", r"^(cannot read image header|image data is corrupt|the image codec failed)"),
    )
)


def failure_reason(text: str) -> str:
    """The member of :data:`FAILURE_REASONS` for the compressor's reason ``text`` (before it is shortened)."""
    for reason, pattern in _REASON_PATTERNS:
        if pattern.search(text):
            return reason
    return "other"
