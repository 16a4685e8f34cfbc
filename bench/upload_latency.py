"""Upload latency and fan-out cost of the ingest service (a benchmark script, not a test).

    .venv/bin/python -m bench.upload_latency [--sizes 100,10000,100000] [--runs 5] [--keep-artifacts]

Measures, for CSVs of 100, 10,000 and 100,000 rows with 3 image URLs each:

* ``POST /upload`` latency, client-side wall time from sending the request to reading the whole answer
  (median, min and max of ``--runs`` uploads per size);
* the time from the upload until the fan-out has finished, i.e. every product is stored and every image
  message published (the request document has ``fanout_complete: true`` and ``fanout_cursor`` equal to the
  last row), and the number of image messages that really sit in the queue then;
* the ingest process's resident memory: baseline, peak sampled every 20 ms while the 100,000-row files are
  fanned out, and the kernel's high-water mark (``VmHWM``) at the end.

Targets (issue 3, 2-core machine): 100 rows < 50 ms, 100,000 rows < 2 s, ingest RSS < 300 MB, fan-out of
100,000 rows < 30 s.

Why it runs its own ingest process instead of timing the stack's one
--------------------------------------------------------------------
Every accepted upload is real work: the 100,000-row runs alone publish 1,500,000 image tasks. On the shared stack
the compressors would try to download them all (hours of retries), the aggregator's sweeper republishes unsettled
tasks of a stuck request, and a few hundred thousand leftover product rows would sit in everyone's database (on
stock FerretDB 1.x, which scans the collection for every query, they slowed everyone down). Purging
``compressor.images`` would also throw away other users' tasks. So the benchmark starts a second
``pixpress-ingest`` (the same program and settings as the stack's, started and stopped by this script only) wired to the
same RabbitMQ, FerretDB and MinIO servers but to names nobody else uses: RabbitMQ virtual host ``pixpress-bench``
(no compressor consumes there), database ``pixpress_bench`` and bucket ``pixpress-bench``. Between runs it purges
that vhost's image queue and drops the products; at the end it deletes the vhost, the database and the bucket.
The image URLs point at a closed local port, so nothing would be fetched even if a task escaped. The shared
services see no traffic at all; they only share the two CPU cores, as any client would.

Needs the stack's servers running (``make up``) and the RabbitMQ management API on 127.0.0.1:15672
(guest/guest) to create and delete the virtual host.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from minio import Minio
from minio.deleteobjects import DeleteObject
from pymongo import AsyncMongoClient

from shared.settings import Settings
from testkit.stack import create_vhost, delete_vhost

REPO = Path(__file__).resolve().parent.parent
VHOST = "pixpress-bench"
DATABASE = "pixpress_bench"
BUCKET = "pixpress-bench"
IMAGE_QUEUE = "compressor.images"
DEAD_URL_BASE = "http://127.0.0.1:9/bench"  # discard port: closed, refuses at once
URLS_PER_ROW = 3
TARGET_MS = {100: 50.0, 100_000: 2000.0}
TARGET_RSS_MB = 300.0
TARGET_FANOUT_S = 30.0


def make_csv(rows: int, nonce: str) -> bytes:
    lines = ["Serial Number,Product Name,Input Image Urls"]
    for i in range(1, rows + 1):
        urls = ",".join(f"{DEAD_URL_BASE}/{nonce}/{i}-{k}.jpg" for k in range(URLS_PER_ROW))
        lines.append(f'BENCH-{i},Bench product {i},"{urls}"')
    return ("\n".join(lines) + "\n").encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field_name} not found for pid {pid}")


class RssSampler:
    """Samples a process's VmRSS in a thread, so the asyncio loop's own pauses cannot hide a peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class SizeResult:
    rows: int
    bytes: int
    latencies_ms: list[float] = field(default_factory=list)
    fanout_s: list[float] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)
    rss_peak_mb: float = 0.0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings()
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        amqp = self.settings.amqp_url.get_secret_value()
        self.amqp_url = amqp.rstrip("/") + "/" + VHOST
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"pixpress-bench-ingest-{os.getpid()}.log"
        self.baseline = 0.0
        self.hwm = 0.0
        self.concurrent_ms: list[float] = []

    # --- isolated resources ----------------------------------------------------------------------------

    def minio(self) -> Minio:
        return Minio(
            self.settings.s3_endpoint,
            access_key=self.settings.s3_access_key.get_secret_value(),
            secret_key=self.settings.s3_secret_key.get_secret_value(),
            secure=self.settings.s3_secure,
        )

    def delete_bucket(self) -> None:
        client = self.minio()
        if not client.bucket_exists(BUCKET):
            return
        objects = (DeleteObject(o.object_name) for o in client.list_objects(BUCKET, recursive=True))
        for error in client.remove_objects(BUCKET, objects):
            print(f"  could not delete {error.name}: {error.message}", file=sys.stderr)
        client.remove_bucket(BUCKET)

    async def start_ingest(self, http: aiohttp.ClientSession) -> int:
        # the limits at their defaults (50 MiB, 1,000,000 rows), whatever lower ones `make test` may have exported
        inherited = {k: v for k, v in os.environ.items() if k not in ("PIXPRESS_MAX_CSV_BYTES", "PIXPRESS_MAX_ROWS")}
        env = {
            **inherited,
            "PIXPRESS_AMQP_URL": self.amqp_url,
            "PIXPRESS_MONGO_DB": DATABASE,
            "PIXPRESS_S3_BUCKET": BUCKET,
            "PIXPRESS_API_HOST": "127.0.0.1",
            "PIXPRESS_API_PORT": str(self.port),
            "PIXPRESS_ALLOW_PRIVATE_URLS": "true",
        }
        binary = shutil.which("pixpress-ingest", path=str(REPO / ".venv" / "bin")) or "pixpress-ingest"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bench ingest exited with {self.process.returncode}; see {self.log_path}")
            try:
                async with http.get(f"{self.api}/healthz") as response:
                    if response.status == 200:
                        return self.process.pid
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"bench ingest did not become healthy; see {self.log_path}")

    def stop_ingest(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # --- one upload --------------------------------------------------------------------------------------

    async def upload(self, http: aiohttp.ClientSession, data: bytes) -> tuple[float, str]:
        form = aiohttp.FormData()
        form.add_field("file", data, filename="bench.csv", content_type="text/csv")
        started = time.perf_counter()
        async with http.post(f"{self.api}/upload", data=form) as response:
            body = await response.json()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"upload refused: {response.status} {body}")
        return elapsed, body["request_id"]

    async def wait_fanout(self, db: Any, request_id: str, rows: int, started: float) -> float:
        while True:
            document = await db.requests.find_one(
                {"_id": request_id}, projection={"fanout_complete": 1, "fanout_cursor": 1, "status": 1}
            )
            if document and document.get("status") == "Failed":
                raise RuntimeError(f"fan-out failed: {document}")
            if document and document.get("fanout_complete") and document.get("fanout_cursor") == rows:
                return time.perf_counter() - started
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"fan-out of {rows} rows not finished after 600 s: {document}")
            await asyncio.sleep(0.05)

    async def small_uploads_during_fanout(self, http: aiohttp.ClientSession, db: Any, rows: int) -> list[float]:
        """/upload latency of 100-row files while the same process fans out a big one (one event loop)."""
        _, request_id = await self.upload(http, make_csv(rows, uuid.uuid4().hex[:8]))
        await asyncio.sleep(1)  # let the fan-out get going
        latencies = []
        for _ in range(self.args.runs):
            latency, _small = await self.upload(http, make_csv(100, uuid.uuid4().hex[:8]))
            latencies.append(latency)
            await asyncio.sleep(1)
        document = await db.requests.find_one({"_id": request_id}, projection={"fanout_complete": 1})
        if document and document.get("fanout_complete"):
            print("  (the big fan-out finished before the small uploads did; their latency is not under load)")
        print("  100 rows during a fan-out: " + ", ".join(f"{ms:.1f} ms" for ms in latencies))
        return latencies

    @staticmethod
    async def queued(channel: aio_pika.abc.AbstractChannel, expected: int) -> tuple[int, aio_pika.abc.AbstractQueue]:
        """Messages in the bench vhost's image queue; the broker's count can trail its confirms briefly."""
        deadline = time.monotonic() + 10
        while True:
            queue = await channel.declare_queue(IMAGE_QUEUE, passive=True)
            count = queue.declaration_result.message_count or 0
            if count >= expected or time.monotonic() > deadline:
                return count, queue
            await asyncio.sleep(0.2)

    async def run(self) -> list[SizeResult]:
        results: list[SizeResult] = []
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await delete_vhost(http, VHOST)  # leftovers of an interrupted run
            await asyncio.to_thread(self.delete_bucket)
            mongo: AsyncMongoClient = AsyncMongoClient(self.settings.mongo_url.get_secret_value())
            await mongo.drop_database(DATABASE)
            await create_vhost(http, VHOST)
            amqp = await aio_pika.connect(self.amqp_url)  # not robust: a robust channel caches passive declares
            try:
                pid = await self.start_ingest(http)
                db = mongo[DATABASE]
                channel = await amqp.channel()
                baseline = rss_mb(pid)
                print(f"bench ingest pid {pid} on {self.api}, baseline RSS {baseline:.1f} MB (log: {self.log_path})")
                for rows in self.args.sizes:
                    result = SizeResult(rows, 0)
                    for run in range(self.args.runs):
                        data = make_csv(rows, uuid.uuid4().hex[:8])
                        result.bytes = len(data)
                        started = time.perf_counter()
                        with RssSampler(pid) as sampler:
                            latency, request_id = await self.upload(http, data)
                            fanout = await self.wait_fanout(db, request_id, rows, started)
                        published, queue = await self.queued(channel, rows * URLS_PER_ROW)
                        result.latencies_ms.append(latency)
                        result.fanout_s.append(fanout)
                        result.messages.append(published)
                        result.rss_peak_mb = max(result.rss_peak_mb, sampler.peak)
                        print(
                            f"  {rows:>7} rows run {run + 1}: upload {latency:8.1f} ms, fan-out {fanout:6.2f} s, "
                            f"{published} image messages queued, peak RSS {sampler.peak:.1f} MB"
                        )
                        await queue.purge()
                        await db.products.drop()
                        await db.requests.delete_one({"_id": request_id})
                    results.append(result)
                if self.args.concurrent:
                    self.concurrent_ms = await self.small_uploads_during_fanout(http, db, max(self.args.sizes))
                hwm = rss_mb(pid, "VmHWM")
                print(f"bench ingest VmHWM (peak RSS over its whole life): {hwm:.1f} MB")
                self.hwm = hwm
                self.baseline = baseline
            finally:
                self.stop_ingest()
                await amqp.close()
                if not self.args.keep_artifacts:
                    await delete_vhost(http, VHOST)
                    await mongo.drop_database(DATABASE)
                    await asyncio.to_thread(self.delete_bucket)
                await mongo.close()
        return results


def report(results: list[SizeResult], bench: Bench) -> None:
    print()
    print(f"machine: {os.cpu_count()} cores; ingest = the same program as the stack's, isolated names (see docstring)")
    print(
        f"{'rows':>8} {'CSV MB':>7} {'upload median':>14} {'min':>9} {'max':>9} {'target':>9}  "
        f"{'fan-out median':>14} {'max':>7} {'messages':>9} {'peak RSS':>9}"
    )
    for r in results:
        target = TARGET_MS.get(r.rows)
        median = statistics.median(r.latencies_ms)
        verdict = "" if target is None else (f"<{target:.0f} ms " + ("ok" if median < target else "MISSED"))
        print(
            f"{r.rows:>8} {r.bytes / 1e6:>7.2f} {median:>11.1f} ms {min(r.latencies_ms):>6.1f} ms "
            f"{max(r.latencies_ms):>6.1f} ms {verdict:>9}  {statistics.median(r.fanout_s):>12.2f} s "
            f"{max(r.fanout_s):>5.2f} s {min(r.messages):>9} {r.rss_peak_mb:>6.1f} MB"
        )
    if bench.concurrent_ms:
        print(
            f"{100:>8} rows uploaded while a {max(r.rows for r in results)}-row fan-out runs in the same process: "
            f"median {statistics.median(bench.concurrent_ms):.1f} ms, max {max(bench.concurrent_ms):.1f} ms"
        )
    biggest = max(results, key=lambda r: r.rows)
    fanout = max(biggest.fanout_s)
    print(
        f"fan-out of {biggest.rows} rows ({biggest.rows * URLS_PER_ROW} image messages): worst {fanout:.2f} s "
        f"(target < {TARGET_FANOUT_S:.0f} s: {'ok' if fanout < TARGET_FANOUT_S else 'MISSED'})"
    )
    peak = max(bench.hwm, max(r.rss_peak_mb for r in results))
    print(
        f"ingest RSS: baseline {bench.baseline:.1f} MB, peak {peak:.1f} MB "
        f"(target < {TARGET_RSS_MB:.0f} MB: {'ok' if peak < TARGET_RSS_MB else 'MISSED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,10000,100000", help="comma-separated row counts")
    parser.add_argument("--runs", type=int, default=5, help="uploads per size (median reported)")
    parser.add_argument(
        "--no-concurrent",
        dest="concurrent",
        action="store_false",
        help="skip timing 100-row uploads during a fan-out of the largest size",
    )
    parser.add_argument("--keep-artifacts", action="store_true", help="keep the bench vhost, database and bucket")
    args = parser.parse_args()
    args.sizes = [int(size) for size in args.sizes.split(",")]
    bench = Bench(args)
    results = asyncio.run(bench.run())
    report(results, bench)


if __name__ == "__main__":
    main()
