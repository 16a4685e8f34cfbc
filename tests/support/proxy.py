"""A TCP proxy in front of a real server that can play the server dying: while ``cutting``, every new connection
is read from (the request reaches "the server") and then dropped without an answer, as when MinIO is killed
mid-write or restarts; otherwise bytes pass both ways untouched."""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cutting = False
        self.cut = 0  # connections dropped
        self.passed = 0  # connections piped to the server
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def wait_cut(self, count: int, timeout: float = 30.0) -> None:
        """Until ``count`` connections have been dropped in all."""
        async with asyncio.timeout(timeout):
            while self.cut < count:
                await asyncio.sleep(0.05)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cutting:
            self.cut += 1
            with contextlib.suppress(ConnectionError):
                await reader.read(4096)
            writer.transport.abort()  # a reset, as from a process that died
            return
        self.passed += 1
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        pipes = [
            asyncio.create_task(self._pipe(reader, upstream_writer)),
            asyncio.create_task(self._pipe(upstream_reader, writer)),
        ]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._pipes.difference_update(pipes)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                target.write(data)
                await target.drain()
        except ConnectionError:
            pass
        finally:
            target.close()
