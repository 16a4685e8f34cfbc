"""History: does a request get slower as the database fills up? (a benchmark script, not a test)

    .venv/bin/python -m bench.history [--sizes 0,100000,1000000] [--runs 5] [--photos 80] [--keep] [--reuse]

One database per history size (results already in it), each with its own ingest, aggregator and compressors, all
running at once. Measurements go round-robin over the sizes (the order rotates every round), so every size sees
the same load from whatever else shares the machine; without that, minutes apart on a shared 2-core machine, the
load average alone moved the numbers by 2x. Per size:

* the same 80-photo request (``--photos``), upload -> ``Completed``, ``--runs`` rounds: median and range, and the
  median over rounds of its ratio to the first size *in the same round*;
* completion latency: from the aggregator recording the request's last image to the request being ``Completed``
  (``finished_at`` minus the newest result's ``at``, both written by the aggregator: exact, not polled), i.e. the
  completion count, the output CSV's two sorted reads and the final write;
* CPU per request of FerretDB and of the aggregator (load-independent: what the database work costs);
* ``GET /status/{id}`` p50/p99 over 1,000 sequential calls, ``GET /requests/{id}/products`` (one page holding all
  80 products) p50/p99 over 200, both for the last measured request, and a page of 40 of a request in the middle
  of the history, taken in slices that alternate between the sizes.

Targets (issue 10): the request at 1,000,000 results <= 1.2x its time on an empty database; ``/status`` p99 < 20 ms
and a products page < 50 ms at 1,000,000 results.

History is written straight into the database the way the services leave a finished request: for every 80-row
request one ``requests`` document (Completed, with totals, output URL and ``finished_hour``), 80 ``products``
(``records.product_document``) and 80 ``results`` (``tracker.result_document``). Sending a million images
through the compressors would take ~8 hours on this machine and measure the codec, not the history. Stored
objects are not written: MinIO's cost per request does not depend on the database.

Isolation (``bench.throughput``'s ``Pipeline``): the programs of this checkout on the stack's servers, per size a
RabbitMQ vhost ``pixpress-history-<size>r-<random>``, database ``pixpress_history_<size>`` and bucket
``pixpress-history-<size>``, emptied at the start and removed at the end (``--keep`` keeps them, and a later
``--keep --reuse`` measures again without writing the history again). The stack's own services and data are never
touched.

Needs ``make up`` (the servers) and the RabbitMQ management API on 127.0.0.1:15672 (guest/guest). Disk: ~1.6 GB
of SQLite per million results.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import PhotoHost, Pipeline, photos, process_tree_cpu, supervised_pid  # noqa: E402
from services.aggregator.tracker import result_document  # noqa: E402
from services.ingest.csv_parser import ProductRow  # noqa: E402
from services.ingest.records import new_request_document, product_document  # noqa: E402
from shared.database import finished_fields, product_id  # noqa: E402
from shared.messages import ImageResult, RequestStatus  # noqa: E402
from shared.timeutil import utcnow  # noqa: E402
from testkit.stack import STATE  # noqa: E402

ROWS_PER_REQUEST = 80
REQUESTS_PER_BATCH = 25  # 2,000 products and 2,000 results per insert_many
POLL_SECONDS = 0.05
HISTORY_CSV_SHA256 = "0" * 64  # marks the history's requests (a real upload's digest is never all zeros)


# --- history, written the way the services write it ---------------------------------------------------------------


def history_request(number: int) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Finished request ``number`` of the history with its products and results."""
    request_id = f"00000000-0000-4000-8000-{number:012d}"
    finished = utcnow() - timedelta(minutes=number % (60 * 24 * 20))  # spread over 20 days
    urls = [f"https://images.example.com/history/{number}/{row}.jpg" for row in range(1, ROWS_PER_REQUEST + 1)]
    request = new_request_document(
        request_id,
        csv_key=f"uploads/{request_id}/input.csv",
        csv_sha256=HISTORY_CSV_SHA256,
        products_total=ROWS_PER_REQUEST,
        images_total=ROWS_PER_REQUEST,
        header=["Serial Number", "Product Name", "Input Image Urls"],
        extra_columns=[],
        webhook_url=None,
        idempotency_key=None,
    )
    request.update(
        {
            "status": RequestStatus.COMPLETED.value,
            "fanout_cursor": ROWS_PER_REQUEST,
            "fanout_complete": True,
            "images_done": ROWS_PER_REQUEST,
            "bytes_in": 650_000 * ROWS_PER_REQUEST,
            "bytes_out": 120_000 * ROWS_PER_REQUEST,
            "output_csv_url": f"http://127.0.0.1:9000/history/outputs/{request_id}/output.csv",
            "updated_at": finished,
            "outbox_pending": False,
            **finished_fields(finished),
        }
    )
    products, results = [], []
    for row, url in enumerate(urls, start=1):
        products.append(product_document(request_id, ProductRow(row, f"SKU-{number}-{row}", f"Product {row}", [url])))
        result = ImageResult(
            request_id=request_id,
            product_id=product_id(request_id, row),
            row=row,
            index=0,
            ok=True,
            output_url=f"http://127.0.0.1:9000/history/images/{request_id}/{row:07d}-00.jpg",
            bytes_in=650_000,
            bytes_out=120_000,
        )
        results.append(result_document(result))
    return request, products, results


async def grow_history(db: Any, start: int, stop: int) -> float:
    """Writes history requests ``start`` .. ``stop - 1``; returns seconds taken."""
    began = time.perf_counter()
    for first in range(start, stop, REQUESTS_PER_BATCH):
        batch = [history_request(n) for n in range(first, min(first + REQUESTS_PER_BATCH, stop))]
        await db.requests.insert_many([request for request, _, _ in batch], ordered=False)
        await db.products.insert_many([p for _, products, _ in batch for p in products], ordered=False)
        await db.results.insert_many([r for _, _, results in batch for r in results], ordered=False)
        done = min(first + REQUESTS_PER_BATCH, stop)
        if done % 1250 == 0 or done == stop:
            rate = (done - start) * ROWS_PER_REQUEST / (time.perf_counter() - began)
            print(f"  history: {done * ROWS_PER_REQUEST:,} results ({rate:,.0f} results/s)", flush=True)
    return time.perf_counter() - began


# --- measurements -------------------------------------------------------------------------------------------------


def names(size: int) -> tuple[str, str, str]:
    """vhost prefix, database, bucket; the "r" ends the prefix, so one size's prefix never matches another's."""
    return f"pixpress-history-{size}r", f"pixpress_history_{size}", f"pixpress-history-{size}"


@dataclass
class Size:
    """One history size: its pipeline, its database and what was measured on it."""

    size: int
    pipeline: Pipeline
    db: Any
    seconds: list[float] = field(default_factory=list)  # upload -> Completed (polled every 50 ms)
    completion_ms: list[float] = field(default_factory=list)  # last result recorded -> Completed
    ferretdb_ms: list[float] = field(default_factory=list)  # FerretDB CPU per request
    aggregator_ms: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    page_ms: list[float] = field(default_factory=list)
    history_page_ms: list[float] = field(default_factory=list)
    last_request: str = ""

    @property
    def api(self) -> str:
        return self.pipeline.api


def cpu_now(size: Size) -> dict[str, float]:
    return {
        "ferretdb": process_tree_cpu(supervised_pid("ferretdb")),
        "aggregator": process_tree_cpu(size.pipeline.processes["aggregator"].pid),
    }


async def timed_request(http: aiohttp.ClientSession, size: Size, host: PhotoHost, count: int, tag: str) -> None:
    form = aiohttp.FormData()
    form.add_field("file", host.csv(range(count), tag).encode(), filename="history.csv", content_type="text/csv")
    cpu = cpu_now(size)
    started = time.perf_counter()
    async with http.post(f"{size.api}/upload", data=form) as answer:
        body = await answer.json()
        assert answer.status == 200, body
    request_id = body["request_id"]
    while True:
        async with http.get(f"{size.api}/status/{request_id}") as answer:
            status = await answer.json()
        if status["status"] in ("Completed", "Failed"):
            break
        await asyncio.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - started
    after = cpu_now(size)
    if status["status"] != "Completed" or status["progress"]["images_done"] != count:
        raise RuntimeError(f"request {request_id} did not complete cleanly: {status}")
    request = await size.db.requests.find_one({"_id": request_id})
    last = max([result["at"] async for result in size.db.results.find({"request_id": request_id})])
    if tag.startswith("warm-up"):
        return
    size.seconds.append(seconds)
    size.completion_ms.append((request["finished_at"] - last).total_seconds() * 1000)
    size.ferretdb_ms.append((after["ferretdb"] - cpu["ferretdb"]) * 1000)
    size.aggregator_ms.append((after["aggregator"] - cpu["aggregator"]) * 1000)
    size.last_request = request_id


async def latencies(http: aiohttp.ClientSession, url: str, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        async with http.get(url) as answer:
            await answer.read()
            assert answer.status == 200, url
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def database_mib(size: Size) -> str:
    path = STATE / "ferretdb" / f"{names(size.size)[1]}.sqlite"
    return f"{path.stat().st_size / 2**20:,.0f} MiB" if path.exists() else "?"


def spread(values: list[float], unit: str, digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(sizes: list[Size], loads: list[float]) -> None:
    base = sizes[0]
    print(f"\nload average while measuring: {min(loads):.1f}-{max(loads):.1f}")
    for size in sizes:
        ratios = [mine / theirs for mine, theirs in zip(size.seconds, base.seconds, strict=True)]
        history = (
            f"; history request's page p50 {p(size.history_page_ms, 0.5):.1f} "
            f"p99 {p(size.history_page_ms, 0.99):.1f} ms"
            if size.history_page_ms
            else ""
        )
        print(
            f"{size.size:>9,} results ({database_mib(size)}): request {spread(size.seconds, 's', 2)}, "
            f"{statistics.median(ratios):.2f}x the first size (per-round median); completion "
            f"{spread(size.completion_ms, 'ms')}; CPU per request FerretDB {spread(size.ferretdb_ms, 'ms')}, "
            f"aggregator {spread(size.aggregator_ms, 'ms')}; /status p50 {p(size.status_ms, 0.5):.1f} "
            f"p99 {p(size.status_ms, 0.99):.1f} ms; products page p50 {p(size.page_ms, 0.5):.1f} "
            f"p99 {p(size.page_ms, 0.99):.1f} ms{history}",
            flush=True,
        )


async def run(args: argparse.Namespace) -> None:
    counts = sorted(int(s) for s in args.sizes.split(","))
    bodies = photos(args.photos)
    host = PhotoHost(bodies)
    await host.start()
    sizes: list[Size] = []
    loads: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        try:
            for count in counts:
                pipeline = Pipeline(os.cpu_count() or 2, 1, names=names(count))
                sizes.append(Size(count, pipeline, None))
                await pipeline.start(http, keep_data=args.reuse)
                client: AsyncMongoClient = AsyncMongoClient(
                    pipeline.connection.get("PIXPRESS_MONGO_URL", "mongodb://127.0.0.1:27017/"), tz_aware=True
                )
                sizes[-1].db = client[names(count)[1]]
            for size in sizes:
                written = await size.db.requests.count_documents({"csv_sha256": HISTORY_CSV_SHA256})
                if written * ROWS_PER_REQUEST != size.size:
                    if written:
                        raise SystemExit(f"{names(size.size)[1]} holds {written} history requests: run without --reuse")
                    print(f"writing {size.size:,} results of history into {names(size.size)[1]} ...", flush=True)
                    took = await grow_history(size.db, 0, size.size // ROWS_PER_REQUEST)
                    print(f"  written in {took:.0f} s", flush=True)
            print(f"settling {args.settle} s, then a warm-up request per size ...", flush=True)
            await asyncio.sleep(args.settle)
            for size in sizes:
                await timed_request(http, size, host, args.photos, f"warm-up-{size.size}")
            for round_ in range(args.runs):
                order = sizes[round_ % len(sizes) :] + sizes[: round_ % len(sizes)]
                for size in order:
                    loads.append(os.getloadavg()[0])
                    await timed_request(http, size, host, args.photos, f"h{size.size}-{round_}")
                print(
                    f"round {round_ + 1}: "
                    + ", ".join(f"{size.size:,}: {size.seconds[-1]:.2f} s" for size in sizes)
                    + f" (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            for _slice in range(10):
                for size in sizes:
                    loads.append(os.getloadavg()[0])
                    size.status_ms += await latencies(http, f"{size.api}/status/{size.last_request}", 100)
                    size.page_ms += await latencies(
                        http, f"{size.api}/requests/{size.last_request}/products?limit=100", 20
                    )
                    if size.size:
                        middle = f"00000000-0000-4000-8000-{size.size // ROWS_PER_REQUEST // 2:012d}"
                        size.history_page_ms += await latencies(
                            http, f"{size.api}/requests/{middle}/products?offset=40&limit=40", 20
                        )
            report(sizes, loads)
        finally:
            for size in sizes:
                size.pipeline.stop()
                if size.db is not None:
                    await size.db.client.close()
                if not args.keep:
                    await size.pipeline.remove(http)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,100000,1000000", help="results of history, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="rounds of timed requests (one per size each)")
    parser.add_argument("--photos", type=int, default=80, help="photos in the timed request")
    parser.add_argument("--settle", type=int, default=30, help="seconds to wait after writing the history")
    parser.add_argument("--keep", action="store_true", help="keep the databases and buckets afterwards")
    parser.add_argument(
        "--reuse", action="store_true", help="use the history a --keep run left instead of writing it again"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
