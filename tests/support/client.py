"""Talks to the running pixpress API the way a client would."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp

API = os.environ.get("PIXPRESS_TEST_API", "http://127.0.0.1:5000")
FINAL = ("Completed", "Failed")


HEADER = "Serial Number,Product Name,Input Image Urls"


def csv_text(rows: list[tuple[str, str, list[str]]], header: str = HEADER) -> str:
    lines = [header]
    for serial, name, urls in rows:
        lines.append(f'{serial},{name},"{",".join(urls)}"')
    return "\r\n".join(lines) + "\r\n"


async def upload(
    session: aiohttp.ClientSession,
    content: bytes | str,
    *,
    webhook_url: str | None = None,
    filename: str = "input.csv",
    content_type: str = "text/csv",
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field(
        "file", content.encode() if isinstance(content, str) else content, filename=filename, content_type=content_type
    )
    if webhook_url is not None:
        form.add_field("webhook_url", webhook_url)
    response = await session.post(f"{API}/upload", data=form, headers=headers)
    await response.read()
    return response


async def wait_final(session: aiohttp.ClientSession, request_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        async with session.get(f"{API}/status/{request_id}") as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        if body["status"] in FINAL:
            return body
        await asyncio.sleep(0.25)
    raise AssertionError(f"request {request_id} not final after {timeout}s: {body}")
