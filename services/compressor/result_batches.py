"""Results that finish close together in one compressor go to the aggregator as one ``ImageResults`` message.

Why: RabbitMQ and the aggregator pay per message (a persistent enqueue, a confirm, a delivery, an ack, a parse),
4.2-4.8 ms of CPU per image together when every image had a message of its own (docs/jpeg-fast-path.md).

When a batch goes: once it holds ``max_results``, once its first result has waited ``max_delay``, or at once when
no other task this compressor holds is still being worked on (nothing could join it), so a lone image and the last
image of a request wait for nothing. Every submitter waits until RabbitMQ has confirmed the message holding its
result; only then does its handler return and its task get acked, so no result is ever only in memory while its
task is acked. A failed publish fails every submitter in it, and their tasks are redelivered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from shared import metrics
from shared.batcher import Batcher
from shared.broker import Broker
from shared.messages import ImageResult, ImageResults, RoutingKey


class ResultBatches:
    def __init__(self, broker: Broker, max_results: int, max_delay: float) -> None:
        self._broker = broker
        self._max_results = max_results
        self._batcher: Batcher[ImageResult] = Batcher(self.publish, max_results, max_delay)
        self._working = 0  # tasks being handled, their result submitted or not
        self._submitted = 0  # of those, the ones whose result is submitted and not yet confirmed

    @contextmanager
    def working(self) -> Iterator[None]:
        """Around the handling of one task: while it runs, finished results may wait for its result to join them."""
        self._working += 1
        try:
            yield
        finally:
            self._working -= 1
            if self._working == self._submitted and self._batcher.waiting:
                self._batcher.flush()  # it ended without a result (a retry, a quarantine): nothing else is coming

    async def submit(self, result: ImageResult) -> None:
        """Returns once the message holding ``result`` is confirmed by RabbitMQ; raises if it could not be."""
        alone = self._working - self._submitted <= 1  # no task but this one is still on its way to a result
        self._submitted += 1
        try:
            await self._batcher.submit(result, flush=alone)
        finally:
            self._submitted -= 1

    async def publish(self, results: Sequence[ImageResult]) -> None:
        """Publish ``results`` now, ``max_results`` to a message, and wait for RabbitMQ's confirms."""
        messages = [
            ImageResults(results=list(results[start : start + self._max_results]))
            for start in range(0, len(results), self._max_results)
        ]
        await metrics.timed("publish", self._broker.publish_many(RoutingKey.IMAGE_DONE_BATCH, messages))
