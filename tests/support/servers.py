"""Local HTTP servers the tests start: an image host with faults and a webhook receiver.

Both bind 127.0.0.1 on a free port; the services reach them because tests run the stack with
``PIXPRESS_ALLOW_PRIVATE_URLS=true``.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


class LocalServer:
    def __init__(self) -> None:
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class ImageHost(LocalServer):
    """Serves registered bodies at ``/img/<name>`` and counts hits; ``/fault/...`` routes misbehave."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: dict[str, tuple[bytes, str]] = {}
        self.hits: defaultdict[str, int] = defaultdict(int)
        self.flaky: dict[str, int] = {}  # name -> number of 503s before success
        self.delay = 0.0  # seconds every /img/ answer waits, to stretch a request over time
        self.hold: asyncio.Event | None = None  # when given, every /img/ answer waits until it is set
        # called with the name and the request before an /img/ answer
        self.on_hit: Callable[[str, web.Request], None] | None = None
        self.app.add_routes(
            [
                web.get("/img/{name}", self._image),
                web.get("/status/{code}", self._status),
                web.get("/hang", self._hang),
                web.get("/redirect/{hops}/{name}", self._redirect),
                web.get("/huge", self._huge),
            ]
        )

    def add(self, name: str, body: bytes, content_type: str = "image/jpeg") -> str:
        self.bodies[name] = (body, content_type)
        return self.url(f"/img/{name}")

    async def _image(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] += 1
        if self.on_hit is not None:
            self.on_hit(name, request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold is not None:
            await self.hold.wait()
        if self.flaky.get(name, 0) > 0:
            self.flaky[name] -= 1
            return web.Response(status=503, text="try later")
        if name not in self.bodies:
            return web.Response(status=404, text="no such image")
        body, content_type = self.bodies[name]
        return web.Response(body=body, content_type=content_type)

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        self.hits[f"status-{code}"] += 1
        return web.Response(status=code, text=f"status {code}")

    async def _hang(self, _request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(text="never")

    async def _redirect(self, request: web.Request) -> web.Response:
        hops = int(request.match_info["hops"])
        name = request.match_info["name"]
        target = f"/redirect/{hops - 1}/{name}" if hops > 1 else f"/img/{name}"
        raise web.HTTPFound(target)

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        """An endless body with no Content-Length: the downloader must stop at its byte limit."""
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        chunk = b"\xff" * 65536
        try:
            for _ in range(4096):  # 256 MiB at most
                await response.write(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class WebhookReceiver(LocalServer):
    """Records every POST; ``responses`` scripts the status codes to answer with, then 204."""

    deliveries: list[Delivery] = field(default_factory=list)
    responses: list[int] = field(default_factory=list)
    on_delivery: Callable[[Delivery], None] | None = None

    def __post_init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()
        self.app.add_routes([web.post("/hook", self._hook)])

    async def _hook(self, request: web.Request) -> web.Response:
        delivery = Delivery(dict(request.headers), await request.read())
        self.deliveries.append(delivery)
        status = self.responses.pop(0) if self.responses else 204
        if 200 <= status < 300:
            self.arrived.set()
        return web.Response(status=status)

    async def wait(self, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self.arrived.wait(), timeout)


class RawHost:
    """Answers every connection with the same raw bytes, whatever HTTP says: for malformed-response tests."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"
