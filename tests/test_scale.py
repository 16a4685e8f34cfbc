"""A 10,000-image request completes with every image settled while every service's memory stays bounded."""

from __future__ import annotations

import asyncio
import csv
import io

import aiohttp
import psutil
import pytest

from tests.support import stack
from tests.support.client import csv_text, upload, wait_final
from tests.support.photos import encode, photo
from tests.support.servers import ImageHost

pytestmark = pytest.mark.faults  # heavy: keeps the whole stack busy for a while

ROWS = 5_000
URLS_PER_ROW = 2
RSS_BOUND_MB = 350  # per service process; stated in docs/architecture.md


async def sample_rss(peaks: dict[str, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for name, pid in stack.processes().items():
            if name in ("rabbitmq", "ferretdb", "minio"):
                continue
            try:
                rss = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue
            peaks[name] = max(peaks.get(name, 0.0), rss)
        await asyncio.sleep(0.5)


async def test_ten_thousand_images_with_bounded_memory(
    stack_api: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    tiny = encode(photo("coffee.png").crop((200, 100, 264, 148)), "JPEG", quality=90)
    url = image_host.add("tiny.jpg", tiny)
    rows = [(f"S{i:05d}", f"Product {i}", [f"{url}?n={i}&k={k}" for k in range(URLS_PER_ROW)]) for i in range(ROWS)]
    peaks: dict[str, float] = {}
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(peaks, stop))
    try:
        response = await upload(http, csv_text(rows))
        assert response.status == 200
        request_id = (await response.json())["request_id"]
        final = await wait_final(http, request_id, timeout=900)
    finally:
        stop.set()
        await sampler
    assert final["status"] == "Completed", final
    assert final["progress"]["images_done"] == ROWS * URLS_PER_ROW
    assert image_host.hits["tiny.jpg"] >= ROWS * URLS_PER_ROW
    async with http.get(final["output_csv_url"]) as csv_response:
        table = list(csv.reader(io.StringIO(await csv_response.text())))
    assert len(table) == ROWS + 1
    assert [r[0] for r in table[1:]] == [serial for serial, _, _ in rows]
    assert all(len([u for u in r[3].split(",") if u]) == URLS_PER_ROW for r in table[1:])
    print(f"peak RSS MB: { {k: round(v) for k, v in sorted(peaks.items())} }")
    assert peaks, "no service process was sampled"
    for name, peak in peaks.items():
        assert peak < RSS_BOUND_MB, f"{name} peaked at {peak:.0f} MB"
