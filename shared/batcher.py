"""Groups items submitted close together into one flush, and tells each submitter when its item is durable.

Two users, one idea: the aggregator writes concurrently delivered results to the database in one round trip
(with FerretDB each costs milliseconds whatever its size, so batching is what lets one aggregator keep up with
many compressors), and the compressor publishes results finishing close together as one message
(services/compressor/result_batches.py). Either way every message behind an item waits (unacked) until the
flush holding it succeeded, so acks still follow durability; a failed flush fails every submitter in it, and
their messages are redelivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[None]], max_items: int, max_delay: float) -> None:
        self._flush = flush
        self._max_items = max_items
        self._max_delay = max_delay
        self._items: list[T] = []
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    async def submit(self, item: T, *, flush: bool = False) -> None:
        """Returns once ``item`` has been flushed; raises what the flush raised. ``flush``: flush it (and whatever
        waits with it) at once, because the caller knows nothing else will come soon."""
        loop = asyncio.get_running_loop()
        if self._done is None:
            self._done = loop.create_future()
            self._timer = loop.call_later(self._max_delay, self._start_flush)
        done = self._done
        self._items.append(item)
        if flush or len(self._items) >= self._max_items:
            self._start_flush()
        await asyncio.shield(done)

    def flush(self) -> None:
        """Flush what is waiting now, without waiting for ``max_items`` or ``max_delay`` (nothing if nothing waits)."""
        self._start_flush()

    @property
    def waiting(self) -> int:
        """Items submitted and not yet handed to a flush."""
        return len(self._items)

    def _start_flush(self) -> None:
        if self._done is None:
            return
        items, done = self._items, self._done
        self._items, self._done = [], None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = asyncio.get_running_loop().create_task(self._run(items, done))
        self._flushing.add(task)  # keep a reference until it ends
        task.add_done_callback(self._flushing.discard)

    async def _run(self, items: list[T], done: asyncio.Future[None]) -> None:
        try:
            await self._flush(items)
        except Exception as exc:  # every waiter sees the failure and nacks its message
            done.set_exception(exc)
        else:
            done.set_result(None)
