"""What a hostile remote server or client can make the running stack say or hold (issue 11, items 6 and 7).

Failure reasons reach the products API, the output CSV and the webhook history; they must be short,
printable and carry none of the remote server's bytes (a malformed status line full of markup is the probe).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import pytest

from testkit.stack import service_env
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.photos import photo_bytes
from tests.support.servers import ImageHost, RawHost, WebhookReceiver

MARKUP = b"<html><script>alert(document.cookie)</script>" + b"\x01\xfe" + b"B" * 300
PRINTABLE = re.compile(r"[\x20-\x7e]{1,200}")


def clean(reason: str) -> bool:
    return bool(PRINTABLE.fullmatch(reason)) and "<" not in reason and "script" not in reason and "BBBB" not in reason


async def test_a_malformed_answer_becomes_a_short_reason_without_the_servers_bytes(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    garbage = RawHost(MARKUP + b"\r\n\r\n")
    await garbage.start()
    try:
        good = image_host.add("rocket.jpg", photo_bytes("rocket.jpg"))
        rows = [("GOOD", "photo", [good]), ("EVIL", "garbage answer", [garbage.url("/a.jpg")])]
        response = await upload(http, csv_text(rows), webhook_url=garbage.url("/hook"))
        request_id = (await response.json())["request_id"]
        final = await wait_final(http, request_id, timeout=120)
        assert final["status"] == "Completed", final
        async with http.get(f"{API}/requests/{request_id}/products") as answer:
            items = {item["serial_number"]: item for item in (await answer.json())["items"]}
        [reason] = items["EVIL"]["image_errors"]
        assert reason and clean(reason), reason
        async with http.get(final["output_csv_url"]) as answer:
            output = await answer.text()
        assert "script" not in output and "BBBB" not in output
        for _ in range(100):  # the first webhook attempt is recorded a moment after Completed
            async with http.get(f"{API}/requests/{request_id}") as answer:
                attempts = (await answer.json())["webhook"]["attempts"]
            if attempts:
                break
            await asyncio.sleep(0.1)
        assert attempts and all(a["error"] and clean(a["error"]) for a in attempts), attempts
    finally:
        await garbage.stop()



# --- routing errors answer problem+json like every other refusal ----------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/status/", 404),
        ("GET", "/upload", 405),
        ("DELETE", "/status/00000000-0000-4000-8000-000000000000", 405),
        ("PUT", "/healthz", 405),
    ],
)
async def test_unknown_routes_and_methods_answer_problem_json(
    stack: str, http: aiohttp.ClientSession, method: str, path: str, status: int
):
    async with http.request(method, f"{API}{path}") as response:
        assert response.status == status
        assert response.content_type == "application/problem+json"
        body = await response.json(content_type=None)
        if status == 405:
            assert response.headers["Allow"] and response.headers["Allow"] in body["detail"]
    assert body["status"] == status and body["title"] and body["detail"]
    assert body["type"].startswith("https://pixpress.dev/problems/")


# --- slow clients cannot hold the API's connections -----------------------------------------------------


LINGERING = 10.0  # aiohttp's RequestHandler lingering_time, which pixpress keeps


def _api_timeouts() -> tuple[float, float]:
    env = service_env()
    return float(env.get("PIXPRESS_API_HEADER_TIMEOUT", 15)), float(env.get("PIXPRESS_API_BODY_TIMEOUT", 300))


@dataclass
class Held:
    answered: float | None  # seconds until the server's first bytes, if it answered at all
    closed: float  # seconds until the server closed the connection
    answer: bytes


async def _held_for(first: bytes, trickle: bytes, give_up: float) -> Held:
    """Send ``first``, then ``trickle`` one byte a second, until the server answers and closes (or ``give_up``)."""
    parts = urlsplit(API)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    started = time.monotonic()
    answered: float | None = None
    answer = b""

    async def trickle_bytes() -> None:
        for byte in trickle:
            await asyncio.sleep(1)
            writer.write(bytes([byte]))
            await writer.drain()

    sender = asyncio.create_task(trickle_bytes())
    try:
        writer.write(first)
        await writer.drain()
        async with asyncio.timeout(give_up):
            while chunk := await reader.read(65536):
                if answered is None:
                    answered = time.monotonic() - started
                answer += chunk
    except (ConnectionError, TimeoutError):
        pass
    finally:
        sender.cancel()
        writer.close()
    return Held(answered, time.monotonic() - started, answer)


async def test_slow_headers_and_slow_bodies_are_cut_off(stack: str):
    """Issue 11 held 60 connections sending a byte every 2 s for as long as the client liked."""
    header_timeout, body_timeout = _api_timeouts()
    host = urlsplit(API).netloc.encode()
    slow_headers = [
        _held_for(b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\n", b"X-Slow: " + b"a" * 300, header_timeout + 30)
        for _ in range(20)
    ]
    head = (
        b"POST /upload HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: multipart/form-data; boundary=b0und\r\n"
        b"Content-Length: 100000\r\n\r\n--b0und\r\n"
    )
    slow_bodies = [_held_for(head, b"a" * 300, body_timeout + 30) for _ in range(5)]
    results = await asyncio.gather(*slow_headers, *slow_bodies)
    for held in results[:20]:
        assert held.closed < header_timeout + 3, f"a slow-header connection was held {held.closed:.1f}s"
    for held in results[20:]:
        assert held.answered is not None and held.answered < body_timeout + 3, held
        assert held.answer.startswith(b"HTTP/1.1 408") and b"application/problem+json" in held.answer, held
        # after answering, aiohttp reads and drops what is still coming for up to its lingering time (10 s),
        # so a client that is merely slow can read the 408 before the connection goes
        assert held.closed < body_timeout + LINGERING + 3, f"a slow-body upload was held {held.closed:.1f}s"
