"""Local HTTP servers the tests start: an image host with faults and a webhook receiver.

Both bind 127.0.0.1 on a free port; the services reach them because tests run the stack with
``PIXPRESS_ALLOW_PRIVATE_URLS=true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Literal

from aiohttp import web

ValidatorKind = Literal["none", "etag", "last-modified", "both"]


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


@dataclass(frozen=True)
class Served:
    """One answer of the image host to ``/img/<name>``: what the client sent and what it got."""

    name: str
    if_none_match: str | None
    if_modified_since: str | None
    status: int

    @property
    def conditional(self) -> bool:
        return self.if_none_match is not None or self.if_modified_since is not None


@dataclass(frozen=True)
class Version:
    """What the host serves under a name, with the validators it sends for it (if any)."""

    body: bytes
    content_type: str
    etag: str | None
    last_modified: datetime | None


class ImageHost(LocalServer):
    """Serves registered bodies at ``/img/<name>`` and counts hits; ``/fault/...`` routes misbehave.

    A body added with ``validators`` is served with an ``ETag`` (a hash of its bytes) and/or a ``Last-Modified``
    (when it was added, always later than the previous version's), and the host honours ``If-None-Match`` (which
    wins, as RFC 9110 says) and ``If-Modified-Since`` with a 304. ``served`` records every answer."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: dict[str, tuple[bytes, str]] = {}
        self.versions: dict[str, Version] = {}
        self.served: list[Served] = []
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

    def add(self, name: str, body: bytes, content_type: str = "image/jpeg", validators: ValidatorKind = "none") -> str:
        self.bodies[name] = (body, content_type)
        etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"' if validators in ("etag", "both") else None
        modified = None
        if validators in ("last-modified", "both"):
            modified = datetime.now(UTC).replace(microsecond=0)
            previous = self.versions.get(name)
            if previous is not None and previous.last_modified is not None and modified <= previous.last_modified:
                modified = previous.last_modified + timedelta(seconds=1)  # HTTP dates have whole seconds
        self.versions[name] = Version(body, content_type, etag, modified)
        return self.url(f"/img/{name}")

    def served_for(self, name: str) -> list[Served]:
        return [answer for answer in self.served if answer.name == name]

    def _not_modified(self, version: Version, request: web.Request) -> bool:
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = {tag.strip() for tag in if_none_match.split(",")}
            return version.etag is not None and (version.etag in tags or "*" in tags)
        if_modified_since = request.headers.get("If-Modified-Since")
        if if_modified_since is not None and version.last_modified is not None:
            try:
                return version.last_modified <= parsedate_to_datetime(if_modified_since)
            except (TypeError, ValueError):
                return False
        return False

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
            return self._answer(name, request, web.Response(status=404, text="no such image"))
        body, content_type = self.bodies[name]
        version = self.versions.get(name)
        if version is None or version.body is not body:  # set through ``bodies`` directly: no validators
            version = Version(body, content_type, None, None)
        headers = {}
        if version.etag is not None:
            headers["ETag"] = version.etag
        if version.last_modified is not None:
            headers["Last-Modified"] = format_datetime(version.last_modified, usegmt=True)
        if self._not_modified(version, request):
            return self._answer(name, request, web.Response(status=304, headers=headers))
        return self._answer(name, request, web.Response(body=body, content_type=content_type, headers=headers))

    def _answer(self, name: str, request: web.Request, response: web.Response) -> web.Response:
        conditions = (request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since"))
        self.served.append(Served(name, *conditions, response.status))
        return response

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
    hold: asyncio.Event | None = None  # when given, every answer waits until it is set (the delivery is in flight)

    def __post_init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()
        self.app.add_routes([web.post("/hook", self._hook)])

    async def _hook(self, request: web.Request) -> web.Response:
        delivery = Delivery(dict(request.headers), await request.read())
        self.deliveries.append(delivery)
        if self.hold is not None:
            await self.hold.wait()
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
