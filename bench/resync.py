"""Catalog re-sync (issue 15): the same CSV uploaded again costs almost nothing; a few changed images cost a few.

    .venv/bin/python -m bench.resync [--images 240] [--changed-percent 5] [--rounds 3] [--compressors 2]

Per round, on an empty database and bucket (so the first upload is a real first upload):

1. **first**: one CSV naming ``--images`` distinct photographs of 2400x1600 (bench/throughput.py makes them, JPEG
   q90, ~650 KB each) is uploaded and timed to ``Completed``;
2. **unchanged**: the same CSV again: every image is revalidated (the host answers 304) and its output reused;
3. **changed**: ``--changed-percent`` of the URLs now serve other photographs (new bytes, new ETag and
   Last-Modified); the same CSV again: those are downloaded and compressed, the rest revalidated.

The photographs are served by a local aiohttp server that sends an ``ETag`` and a ``Last-Modified`` with each one,
honours ``If-None-Match`` / ``If-Modified-Since`` with a 304, and counts full answers and 304s. For every run the
script prints the time upload -> ``Completed`` (status polled every 50 ms), CPU per image of every part of the
pipeline (compressors, ingest, aggregator, RabbitMQ, FerretDB, MinIO, this script's image host and polling) and
what the status API says was cached; at the end, the speed-ups over the rounds as ranges, with the load averages.

Isolation as in bench/throughput.py: its own ingest, aggregator and compressors (this checkout's programs, the
cache at its default, on) on the stack's servers under names nobody else uses: RabbitMQ vhost
``pixpress-resync-<random>``, database ``pixpress_resync``, bucket ``pixpress-resync``, emptied for every round
and removed at the end. The servers and the 2 cores are shared with whoever else works on the machine: hence the
ranges, the load averages and the CPU columns, which other people's load moves much less than wall time.

Needs ``make up`` (the servers) and the RabbitMQ management API on 127.0.0.1:15672 (guest/guest).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import PhotoHost, Pipeline, Run, one_request, photos  # noqa: E402

NAMES = ("pixpress-resync", "pixpress_resync", "pixpress-resync")
POLL_SECONDS = 0.05  # the unchanged re-upload takes well under a second: 0.25 s polling would be most of it
TARGETS = {"unchanged": 10.0, "changed": 5.0}  # minimum speed-up over the first upload


class ValidatingPhotoHost(PhotoHost):
    """``PhotoHost`` with validators: ``ETag`` (a hash of the bytes) and ``Last-Modified`` per photo, 304 when the
    client's validators still match, and counts of full answers and 304s."""

    def __init__(self, bodies: list[bytes]) -> None:
        super().__init__(bodies)
        self.full = 0
        self.not_modified = 0
        self.etags: list[str] = []
        self.modified: list[datetime] = []
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        for i, body in enumerate(bodies):
            self.etags.append(_etag(body))
            self.modified.append(start + timedelta(seconds=i))

    def replace(self, i: int, body: bytes) -> None:
        """Photo ``i`` now serves ``body``: new ETag, Last-Modified now (later than any before)."""
        self.bodies[i] = body
        self.etags[i] = _etag(body)
        self.modified[i] = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)

    async def _photo(self, request: web.Request) -> web.Response:
        self.last_served = time.perf_counter()
        i = int(request.match_info["i"])
        headers = {"ETag": self.etags[i], "Last-Modified": format_datetime(self.modified[i], usegmt=True)}
        if request.headers.get("If-None-Match") == self.etags[i]:
            self.not_modified += 1
            return web.Response(status=304, headers=headers)
        self.full += 1
        return web.Response(body=self.bodies[i], content_type="image/jpeg", headers=headers)

    def counts(self) -> tuple[int, int]:
        """(full answers, 304s) since the last call."""
        counts = (self.full, self.not_modified)
        self.full = self.not_modified = 0
        return counts


def _etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:24]}"'


def cpu_per_image(run: Run) -> float:
    return sum(run.cpu_ms["total"].values())


def describe(label: str, run: Run, load: float, served: tuple[int, int]) -> str:
    parts = ", ".join(f"{name} {ms:.1f}" for name, ms in run.cpu_ms["total"].items() if ms >= 0.05)
    progress = run.progress
    return (
        f"  {label:9s} {run.seconds:6.2f} s ({run.images / run.seconds:6.1f} images/s, load average {load:.1f}); "
        f"cached {progress.get('images_cached', 0)} (revalidated {progress.get('images_revalidated', 0)}); "
        f"host: {served[0]} full answers, {served[1]} x 304\n"
        f"            /upload {run.upload_ms:.0f} ms, last photo served at {run.last_download:.2f} s, every image "
        f"recorded at {run.settled:.2f} s, output CSV and Completed {run.seconds - run.settled:.2f} s later\n"
        f"            CPU per image {cpu_per_image(run):.1f} ms: {parts}"
    )


async def one_round(
    http: aiohttp.ClientSession, pipeline: Pipeline, bodies: list[bytes], spares: list[bytes], round_no: int
) -> dict[str, Run]:
    host = ValidatingPhotoHost(list(bodies))
    await host.start()
    try:
        await pipeline.start(http)
        count, runs = len(bodies), {}
        tag = f"r{round_no}"
        for label in ("first", "unchanged", "changed"):
            if label == "changed":
                step = max(1, count // len(spares))
                for n, body in enumerate(spares):
                    host.replace((n * step) % count, body)
            host.counts()
            load = os.getloadavg()[0]
            run = await one_request(http, pipeline.api, host, count, tag, pipeline.cpu_seconds, poll=POLL_SECONDS)
            print(describe(label, run, load, host.counts()), flush=True)
            runs[label] = run
        return runs
    finally:
        pipeline.stop()
        await host.runner.cleanup()


def summary(rounds: list[dict[str, Run]], loads: list[float]) -> None:
    print(f"\nsummary over {len(rounds)} round(s), load average {min(loads):.1f}-{max(loads):.1f}")
    for label in ("first", "unchanged", "changed"):
        seconds = [r[label].seconds for r in rounds]
        cpu = [cpu_per_image(r[label]) for r in rounds]
        line = (
            f"  {label:9s} {min(seconds):.2f}-{max(seconds):.2f} s (median {statistics.median(seconds):.2f}); "
            f"CPU per image {min(cpu):.1f}-{max(cpu):.1f} ms"
        )
        if label in TARGETS:
            speedups = [r["first"].seconds / r[label].seconds for r in rounds]
            cpu_ratio = [cpu_per_image(r["first"]) / cpu_per_image(r[label]) for r in rounds]
            verdict = "met" if min(speedups) >= TARGETS[label] else "NOT met in every round"
            line += (
                f"; {min(speedups):.1f}-{max(speedups):.1f}x faster than the first (target {TARGETS[label]:g}x: "
                f"{verdict}), {min(cpu_ratio):.1f}-{max(cpu_ratio):.1f}x less CPU"
            )
        print(line, flush=True)


async def main_async(args: argparse.Namespace) -> None:
    changed = max(1, round(args.images * args.changed_percent / 100))
    everything = photos(args.images + changed)
    bodies, spares = everything[: args.images], everything[args.images :]
    mib = sum(map(len, bodies)) / 2**20
    print(
        f"{len(bodies)} distinct photographs 2400x1600, JPEG q90, {mib:.0f} MiB; {changed} of them change in the "
        f"third upload ({args.changed_percent:g} %); {args.compressors} compressors; {os.cpu_count()} cores",
        flush=True,
    )
    rounds: list[dict[str, Run]] = []
    loads: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        try:
            for round_no in range(1, args.rounds + 1):
                loads.append(os.getloadavg()[0])
                print(f"round {round_no} (load average {loads[-1]:.1f})", flush=True)
                pipeline = Pipeline(args.compressors, 1, names=NAMES, output_cache=True)
                rounds.append(await one_round(http, pipeline, bodies, spares, round_no))
                loads.append(os.getloadavg()[0])
        finally:
            await Pipeline(0, 0, names=NAMES).remove(http)
    summary(rounds, loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--changed-percent", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compressors", type=int, default=2, help="compressor processes, one codec thread each")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
