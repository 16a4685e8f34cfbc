"""``make demo``: serve real photographs locally, upload demo/sample.csv, follow it to the end, show the result.

The photos are the samples scikit-image ships; ``missing.jpg`` is deliberately absent to show how a failed
image appears in the output CSV.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
from aiohttp import web
from tqdm import tqdm

from testkit.photos import DATA_DIR as PHOTO_DIR

API = os.environ.get("PIXPRESS_DEMO_API", "http://127.0.0.1:5000")
PHOTO_PORT = 8765
SAMPLE = Path(__file__).resolve().parent.parent / "demo" / "sample.csv"


async def serve_photos() -> web.AppRunner:
    app = web.Application()
    app.router.add_static("/photos/", PHOTO_DIR)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PHOTO_PORT).start()
    return runner


async def main() -> int:
    runner = await serve_photos()
    try:
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("file", SAMPLE.read_bytes(), filename=SAMPLE.name, content_type="text/csv")
            async with session.post(f"{API}/upload", data=form) as response:
                body = await response.json()
                if response.status != 200:
                    print(f"upload refused ({response.status}): {body}", file=sys.stderr)
                    return 1
            request_id = body["request_id"]
            print(f"uploaded {SAMPLE.name}: {body['message']} request_id={request_id}")
            status = await follow(session, request_id)
            print(
                f"status: {status['status']}  images done={status['progress']['images_done']} "
                f"failed={status['progress']['images_failed']}  saved={status['progress']['savings_percent']}%"
            )
            if "output_csv_url" not in status:
                print(f"no output CSV: {status.get('error')}", file=sys.stderr)
                return 1
            print(f"output CSV: {status['output_csv_url']}\n")
            async with session.get(status["output_csv_url"]) as csv_response:
                print(await csv_response.text())
            return 0 if status["status"] == "Completed" else 1
    finally:
        await runner.cleanup()


async def follow(session: aiohttp.ClientSession, request_id: str, timeout: float = 300.0) -> dict:
    status: dict = {}
    with tqdm(total=100, unit="%", desc="processing", bar_format="{l_bar}{bar}| {n:.0f}%") as bar:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            async with session.get(f"{API}/status/{request_id}") as response:
                status = await response.json()
            shown = (status["progress"]["percent"], status["status"])
            if shown != (bar.n, bar.postfix):  # redraw only on change: quiet when stdout is not a terminal
                bar.n = shown[0]
                bar.set_postfix_str(shown[1])
            if status["status"] in ("Completed", "Failed"):
                return status
            await asyncio.sleep(0.3)
    raise SystemExit(f"request {request_id} did not finish in {timeout:.0f}s (last status: {status})")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
