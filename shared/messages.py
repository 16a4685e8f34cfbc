"""The only contract between services: pydantic models for every message and the routing keys they travel on.

Messages carry ids and small facts, never image bytes; anything large lives in MinIO or MongoDB.

Compatibility rule (services are upgraded one at a time, so old and new versions read each other's messages):

* **Additive changes only** on a routing key: a new field must be optional (it has a default), and readers ignore
  fields they do not know (``extra="ignore"``), so a message from a newer producer is processed by an older
  consumer, and an older producer's message (without the field) by a newer one. ``ImageResult.codec``,
  ``format_in`` and ``format_out`` were added this way.
* A field is never removed, renamed, made required or given another type or meaning on the same routing key.
  Such a **breaking change gets a new routing key** (e.g. ``image.todo.v2``) and queue; producers switch to it once
  every consumer of the new key is deployed, and the old key is retired once its queue is empty.
* A message that misses a required field or carries a malformed one is still poison: the consumer rejects it into
  ``<queue>.dlq`` at once (:meth:`shared.broker.Broker.consume`).

docs/messages.md lists every routing key, its queue, producer and consumer.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class RoutingKey(StrEnum):
    """Topic routing keys on the main exchange."""

    REQUEST_ACCEPTED = "request.accepted"
    IMAGE_TODO = "image.todo"
    IMAGE_SUSPECT = "image.suspect"
    IMAGE_BATCH = "image.batch"
    IMAGE_DONE = "image.done"
    IMAGE_DONE_BATCH = "image.done.batch"
    REQUEST_FINISHED = "request.finished"


class Queue(StrEnum):
    """Consumer queues; each has a dead-letter twin named ``<queue>.dlq``."""

    FANOUT = "ingest.fanout"
    IMAGES = "compressor.images"
    # redelivered image tasks, processed one at a time per compressor (see services/compressor/worker.py)
    IMAGES_SUSPECT = "compressor.images.suspect"
    # image tasks whose URL is known (the output cache): a few dozen per message, revalidated together
    IMAGES_BATCH = "compressor.images.batch"
    RESULTS = "aggregator.results"
    # results several to a message (ImageResults), from compressors with PIXPRESS_RESULT_BATCH above 1
    RESULTS_BATCH = "aggregator.results.batch"
    WEBHOOKS = "notifier.webhooks"


QUEUE_BINDINGS: dict[Queue, RoutingKey] = {
    Queue.FANOUT: RoutingKey.REQUEST_ACCEPTED,
    Queue.IMAGES: RoutingKey.IMAGE_TODO,
    Queue.IMAGES_SUSPECT: RoutingKey.IMAGE_SUSPECT,
    Queue.IMAGES_BATCH: RoutingKey.IMAGE_BATCH,
    Queue.RESULTS: RoutingKey.IMAGE_DONE,
    Queue.RESULTS_BATCH: RoutingKey.IMAGE_DONE_BATCH,
    Queue.WEBHOOKS: RoutingKey.REQUEST_FINISHED,
}


class RequestStatus(StrEnum):
    """Seed spellings; clients match on these strings."""

    QUEUED = "Queued"
    PROCESSING = "Processing"
    COMPLETED = "Completed"
    FAILED = "Failed"


class Message(BaseModel):
    """Unknown fields are ignored (a newer producer may have added them); a missing or malformed required field
    makes the message poison rather than half-understood."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class RequestAccepted(Message):
    """Ingest stored the CSV and the request; fan-out may begin."""

    request_id: str


class SourceRecord(Message):
    """One download of a URL: its origin's validators, the SHA-256 of its bytes and where their output is.

    In an ``ImageTask`` (``known``): what pixpress remembers of the URL, so the compressor can ask the origin
    whether it changed (If-None-Match / If-Modified-Since). In an ``ImageResult`` (``source``): what a download
    just found, for the aggregator to remember under ``url_id`` (docs/cache.md).
    """

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    etag: str | None = Field(default=None, max_length=256)
    last_modified: str | None = Field(default=None, max_length=64)
    object_key: str = Field(max_length=256)
    url_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ImageSlot(Message):
    """Which image a task or result is about: the ``index``-th URL of CSV row ``row`` (1 = first data row)."""

    request_id: str
    product_id: str
    row: int = Field(ge=1)
    index: int = Field(ge=0)


class ImageTask(ImageSlot):
    """One input URL to download, compress and store."""

    url: str
    attempt: int = Field(default=1, ge=1)
    # set by the fan-out when the URL was downloaded before with validators (PIXPRESS_CACHE=on)
    known: SourceRecord | None = None

    def settled(self, *, ok: bool, **outcome: object) -> ImageResult:
        """The result that settles this task's slot."""
        slot = {name: getattr(self, name) for name in ImageSlot.model_fields}
        return ImageResult.model_validate({**slot, "ok": ok, **outcome})


class ImageBatch(Message):
    """Image tasks of one request whose URLs pixpress downloaded before (each has ``known``): one message for
    dozens of revalidations that each cost about a millisecond, where per-message costs (a persistent delivery
    and its ack, a confirmed publish) would otherwise be most of the work (docs/cache.md)."""

    tasks: list[ImageTask] = Field(min_length=1, max_length=1000)


class ImageResult(ImageSlot):
    """The settled outcome of one ImageTask: an output URL or a reason."""

    ok: bool
    output_url: str | None = None
    error: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    # how the output was encoded: "dct" (JPEG re-quantised in the DCT domain) or "pillow" (decoded to pixels),
    # now or, for a cached output, when it was made; None on failures and from compressors that predate the field
    codec: str | None = None
    # the format the original decoded as (Pillow's name: JPEG, PNG, WEBP, GIF, MPO, ...) and the one stored (JPEG or
    # WEBP), for the console; for a cached output read back from the shared object (format_in is None for objects
    # stored before it was recorded); None on failures and from compressors that predate the fields
    format_in: str | None = None
    format_out: str | None = None
    # the output was reused and no codec ran for this image; ``cache`` says why: "revalidated" (the origin
    # answered 304, nothing was downloaded) or "same_bytes" (these bytes were compressed before); docs/cache.md
    cached: bool = False
    cache: str | None = Field(default=None, max_length=32)
    # the shared, content-addressed object the output URL names (images/c/...), None for per-request outputs
    cache_object: str | None = Field(default=None, max_length=256)
    # what this download found, for the aggregator to remember per URL (only when the origin sent validators)
    source: SourceRecord | None = None


# the most results one ImageResults message may carry (PIXPRESS_RESULT_BATCH is bounded by it)
MAX_RESULTS_PER_MESSAGE = 256


class ImageResults(Message):
    """Results that finished close together in one compressor, in one message: RabbitMQ and the aggregator then pay
    their per-message costs (a persistent enqueue, a delivery, an ack, a parse) once per batch instead of once per
    image (docs/messages.md). A new type on a routing key and queue of its own, so an aggregator that predates it
    never receives one; the results may belong to different requests. One malformed result makes the whole message
    poison, as a malformed field does any message."""

    results: list[ImageResult] = Field(min_length=1, max_length=MAX_RESULTS_PER_MESSAGE)


class Progress(Message):
    """Counts reported by the status API and in webhooks."""

    products_total: int = 0
    images_total: int = 0
    images_done: int = 0
    images_failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    images_cached: int = 0  # of images_done: outputs reused without a codec run (docs/cache.md)
    images_revalidated: int = 0  # of images_cached: the origin answered 304, nothing was downloaded

    @property
    def images_settled(self) -> int:
        return self.images_done + self.images_failed

    @property
    def percent(self) -> float:
        if self.images_total == 0:
            return 0.0
        return round(100.0 * self.images_settled / self.images_total, 2)


class RequestFinished(Message):
    """A request reached its final status; the notifier turns this into a webhook."""

    request_id: str
    status: RequestStatus
    output_csv_url: str | None = None
    error: str | None = None
    progress: Progress
    finished_at: datetime
    attempt: int = Field(default=1, ge=1)
