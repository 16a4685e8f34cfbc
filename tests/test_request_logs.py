"""Following one request through the logs of all four services with the one documented command.

``scripts/stack.sh logs --request ID`` merges every line carrying ``request_id`` ID from the services' log files.
These tests run requests through the real stack, then read them back with that command and check what an
operator relies on: every line names its service, every line about one image names its row and index, each
image's outcome is logged once, and each request's ``request_finished`` is logged once, under its own id, even
when the aggregator records results of several requests in one batch.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter

import aiohttp

from testkit.stack import REPO
from tests.support.client import csv_text, upload, wait_final
from tests.support.photos import photo_as_jpeg
from tests.support.servers import ImageHost, WebhookReceiver

IMAGE_EVENTS = ("image_done", "image_failed")


def request_lines(request_id: str) -> list[dict]:
    out = subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), "logs", "--request", request_id, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode in (0, 1), out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


async def lines_until(request_id: str, event: str, timeout: float = 20.0) -> list[dict]:
    """The request's lines once ``event`` is among them (supervisord writes the services' output as it comes)."""
    deadline = time.monotonic() + timeout
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = await asyncio.to_thread(request_lines, request_id)
        if any(line.get("event") == event for line in lines):
            return lines
        await asyncio.sleep(0.5)
    raise AssertionError(f"no {event} line for {request_id}: {[line.get('event') for line in lines]}")


async def test_one_command_follows_a_request_through_the_four_services(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    ok = [image_host.add(f"log-{i}.jpg", photo_as_jpeg(name)) for i, name in enumerate(("chelsea.png", "coffee.png"))]
    missing = image_host.url("/img/log-missing.jpg")
    rows = [("L-1", "Cat", [ok[0], missing]), ("L-2", "Coffee", [ok[1]])]
    response = await upload(http, csv_text(rows), webhook_url=webhook.url("/hook"))
    request_id = (await response.json())["request_id"]
    await wait_final(http, request_id)
    lines = await lines_until(request_id, "webhook_attempt")

    assert all(line["request_id"] == request_id for line in lines)
    services = Counter(line.get("service") for line in lines)
    assert set(services) == {"ingest", "compressor", "aggregator", "notifier"}, services
    events = Counter(line["event"] for line in lines)
    assert events["upload_accepted"] == 1 and events["fanout_done"] == 1
    assert events["request_finished"] == 1 and events["webhook_attempt"] == 1
    for line in lines:
        if line["service"] == "compressor":
            assert {"row", "index"} <= line.keys(), line
    outcomes = Counter((line["row"], line["index"], line["event"]) for line in lines if line["event"] in IMAGE_EVENTS)
    assert outcomes == {(1, 0, "image_done"): 1, (1, 1, "image_failed"): 1, (2, 0, "image_done"): 1}
    failed = next(line for line in lines if line["event"] == "image_failed")
    assert failed["failure"] == "download_4xx"
    # the lines come in time order, upload first
    stamps = [line["timestamp"] for line in lines]
    assert stamps == sorted(stamps) and lines[0]["event"] == "upload_accepted"

    readable = await asyncio.to_thread(
        subprocess.run,
        [str(REPO / "scripts" / "stack.sh"), "logs", "--request", request_id],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert readable.returncode == 0
    assert any(" 1/1 image_failed " in line and "compressor-" in line for line in readable.stdout.splitlines())


async def test_requests_finished_in_one_batch_are_each_logged_under_their_own_id(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    """The aggregator records the results that arrive within 50 ms in one batch, in a task whose log context
    was copied from one of the messages: a request finished in that batch used to be logged under another's id."""
    url = image_host.add("batch.jpg", photo_as_jpeg("chelsea.png", quality=60))
    responses = await asyncio.gather(*(upload(http, csv_text([(f"B-{i}", "Cat", [url])])) for i in range(8)))
    ids = [(await response.json())["request_id"] for response in responses]
    await asyncio.gather(*(wait_final(http, request_id) for request_id in ids))
    for request_id in ids:
        lines = await lines_until(request_id, "request_finished")
        finished = [line for line in lines if line["event"] == "request_finished"]
        assert len(finished) == 1, (request_id, finished)
        assert finished[0]["service"] == "aggregator"
