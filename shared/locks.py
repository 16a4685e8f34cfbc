"""Per-key (per-request) mutual exclusion inside one process.

FerretDB 1.x applies an update by reading the document, changing it in Go and writing it back, without
isolation: two concurrent updates of one document can both report success while one is lost (measured: two
results for one product, both "modified", one slot and one counter increment gone). Serialising every write
for a request through one lock makes a service correct on FerretDB with a single replica; on MongoDB the
conditional updates are atomic by themselves and replicas may be added freely.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:  # forget idle keys so memory does not grow with request count
                del self._users[key]
                del self._locks[key]
