"""Runs inside a network namespace that tests/test_redirect_guard.py creates, where ``PUBLIC`` is a local address:
an image host with a public address redirects to loopback spellings served by a second host on 127.0.0.1, and the
guarded downloader (the compressor's, ``shared.download.fetch`` with ``allow_private=False``) follows the chain.
Prints one JSON object: per spelling, the download's outcome and how many requests reached the loopback host.

A namespace is needed because every address a test can otherwise reach is loopback, which the guard refuses on
the first hop: only a host the guard allows can show what it does on a later one.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
from aiohttp import web

from shared.download import DownloadError, DownloadLimits, fetch
from shared.url_guard import guarded_connector
from testkit.photos import photo_bytes

PUBLIC = "9.9.9.9"  # any globally routable address: inside the namespace it is only a name for its loopback
PUBLIC_PORT = 8080
LOOPBACK_PORT = 8081


async def probe(spellings: dict[str, str]) -> dict[str, Any]:
    body = photo_bytes("rocket.jpg")
    hits = {"loopback": 0}
    targets = {name: f"http://{host}:{LOOPBACK_PORT}/img/a.jpg" for name, host in spellings.items()}
    targets["public"] = f"http://{PUBLIC}:{PUBLIC_PORT}/img/a.jpg"  # the control: a chain the guard must allow

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound(targets[request.match_info["name"]])

    async def image(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/jpeg")

    async def loopback_image(_request: web.Request) -> web.Response:
        hits["loopback"] += 1
        return web.Response(body=body, content_type="image/jpeg")

    public_app = web.Application()
    public_app.add_routes([web.get("/hop/{name}", hop), web.get("/img/a.jpg", image)])
    loopback_app = web.Application()
    loopback_app.add_routes([web.get("/img/a.jpg", loopback_image)])
    runners = [web.AppRunner(public_app), web.AppRunner(loopback_app)]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], PUBLIC, PUBLIC_PORT).start()
    await web.TCPSite(runners[1], "127.0.0.1", LOOPBACK_PORT).start()
    limits = DownloadLimits(max_bytes=5_000_000, max_redirects=3, total_timeout=5, allow_private=False)
    outcomes: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(connector=guarded_connector(False)) as session:
            for name in targets:
                before = hits["loopback"]
                outcome: dict[str, Any] = {}
                try:
                    fetched = await fetch(session, f"http://{PUBLIC}:{PUBLIC_PORT}/hop/{name}", limits)
                    outcome["bytes"] = len(fetched.body)
                except DownloadError as exc:
                    outcome.update(error=exc.reason, transient=exc.transient)
                outcome["loopback_hits"] = hits["loopback"] - before
                outcomes[name] = outcome
    finally:
        for runner in runners:
            await runner.cleanup()
    outcomes["_image_bytes"] = len(body)
    return outcomes


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(json.loads(sys.argv[1])))))
