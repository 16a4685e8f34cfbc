"""GET /requests: does a page cost more as history grows? And what do busy hours cost? (a benchmark, not a test)

    .venv/bin/python -m bench.request_list [--histories 0,1250,12500] [--per-hour 20,200,1000] [--calls 60]

History: per size, a scratch database holding that many finished requests spread over 20 days as ingest writes
them (``created_hour`` and the hour listed in ``request_hours``; 12,500 requests of 80 images = a million images),
plus one request uploaded just now. Busy hours: a database whose current hour holds N requests (every page of the
newest hour reads all of them). For each, the pages a client reads: the first page (``limit=20``), a page from a
cursor in the middle of the history, and the last page, each timed over ``--calls`` HTTP calls (p50 and p99),
with FerretDB's CPU per call (averaged over batches of 10; load-independent: what the database work costs).
Sizes are measured round-robin so every size sees the same load from whatever else shares the machine.

The API is ingest's own ``build_app`` served in this process on the stack's FerretDB; requests, products and
results are not needed (a page reads only ``requests``, ``request_hours`` and ``progress``). Each database is
``pixpress_bench_list_<name>``, dropped at the end. Needs ``make up``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import process_tree_cpu, supervised_pid  # noqa: E402
from services.ingest.api import build_app  # noqa: E402
from services.ingest.backfill import index_existing_requests  # noqa: E402
from services.ingest.records import new_request_document  # noqa: E402
from services.ingest.upload import UploadHandler  # noqa: E402
from shared.broker import Broker  # noqa: E402
from shared.database import Database, finished_fields  # noqa: E402
from shared.messages import RequestStatus  # noqa: E402
from shared.request_hours import created_fields, record_hour  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import Storage  # noqa: E402
from shared.timeutil import utcnow  # noqa: E402

BATCH = 500
SPREAD = timedelta(days=20)


@dataclass
class Case:
    name: str
    db: Database
    client: TestClient | None = None
    middle: str = ""  # the `next` path that starts in the middle of the history
    last: str = ""  # the path of the last page
    ms: dict[str, list[float]] = field(default_factory=dict)
    ferretdb_ms: dict[str, list[float]] = field(default_factory=dict)


def finished_request(created_ago: timedelta) -> dict[str, Any]:
    request_id = str(uuid.uuid4())
    created = utcnow() - created_ago
    request = new_request_document(
        request_id,
        csv_key=f"uploads/{request_id}/input.csv",
        csv_sha256="0" * 64,
        products_total=80,
        images_total=80,
        header=["Serial Number", "Product Name", "Input Image Urls"],
        extra_columns=[],
        webhook_url=None,
        idempotency_key=None,
    )
    finished = created + timedelta(minutes=2)
    request.update(
        **created_fields(created),
        status=RequestStatus.COMPLETED.value,
        images_done=80,
        fanout_complete=True,
        updated_at=finished,
        output_csv_url=f"http://127.0.0.1:9000/bench/outputs/{request_id}/output.csv",
        **finished_fields(finished),
    )
    return request


async def fill(db: Database, ages: list[timedelta]) -> None:
    """Requests created ``ages`` ago, written the way ingest writes them (hour listed first)."""
    for first in range(0, len(ages), BATCH):
        batch = [finished_request(age) for age in ages[first : first + BATCH]]
        for hour in sorted({request["created_hour"] for request in batch}):
            await record_hour(db, hour)
        await db.requests.insert_many(batch, ordered=False)


async def setup(name: str, ages: list[timedelta]) -> Case:
    settings = Settings(mongo_db=f"pixpress_bench_list_{name}")
    db = Database(settings)
    await db.connect()
    await db.client.drop_database(settings.mongo_db)
    await db.connect()
    await index_existing_requests(db)
    began = time.perf_counter()
    await fill(db, [*ages, timedelta(0)])
    print(f"  {name}: {len(ages) + 1:,} requests written in {time.perf_counter() - began:.0f} s", flush=True)
    upload = UploadHandler(settings, db, Storage(settings), Broker(settings.amqp_url.get_secret_value()))

    async def healthy() -> dict[str, bool]:
        return {}

    case = Case(name, db)
    case.client = TestClient(TestServer(build_app(settings, db, upload, healthy), host="127.0.0.1"))
    await case.client.start_server()
    path, pages = "/requests?limit=20", 0
    while path:  # page through once: the middle and the last page's paths
        body = await (await case.client.get(path)).json()
        pages += 1
        if pages == max(1, (len(ages) + 1) // 40):
            case.middle = body.get("next", path)
        case.last, path = path, body.get("next")
    case.middle = case.middle or "/requests?limit=20"
    return case


async def timed(case: Case, label: str, path: str, calls: int) -> None:
    assert case.client is not None
    ferretdb = supervised_pid("ferretdb")
    cpu = process_tree_cpu(ferretdb)  # per batch: the clock ticks in 10 ms
    for _ in range(calls):
        started = time.perf_counter()
        answer = await case.client.get(path)
        await answer.read()
        assert answer.status == 200, path
        case.ms.setdefault(label, []).append((time.perf_counter() - started) * 1000)
    case.ferretdb_ms.setdefault(label, []).append((process_tree_cpu(ferretdb) - cpu) * 1000 / calls)


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    histories = [int(n) for n in args.histories.split(",") if n]
    per_hour = [int(n) for n in args.per_hour.split(",") if n]
    cases: list[Case] = []
    try:
        print("writing the databases ...", flush=True)
        for count in histories:
            ages = [SPREAD * (n + 1) / (count + 1) for n in range(count)]
            cases.append(await setup(f"history_{count}", ages))
        for count in per_hour:  # all within the last 50 minutes, so within the current and the previous hour
            cases.append(await setup(f"hour_{count}", [timedelta(minutes=50) * n / count for n in range(count)]))
        loads: list[float] = []
        for slice_ in range(args.calls // 10):
            for case in cases[slice_ % len(cases) :] + cases[: slice_ % len(cases)]:
                loads.append(os.getloadavg()[0])
                await timed(case, "first", "/requests?limit=20", 10)
                await timed(case, "middle", case.middle, 10)
                await timed(case, "last", case.last, 10)
        print(f"\nload average while measuring: {min(loads):.1f}-{max(loads):.1f}")
        print(f"{'database':<16} " + " ".join(f"{label + ' page p50/p99 (FerretDB CPU p50)':>40}" for label in case.ms))
        for case in cases:
            cells = [
                f"{p(case.ms[label], 0.5):.1f}/{p(case.ms[label], 0.99):.1f} ms "
                f"({p(case.ferretdb_ms[label], 0.5):.1f} ms)"
                for label in ("first", "middle", "last")
            ]
            print(f"{case.name:<16} " + " ".join(f"{cell:>40}" for cell in cells), flush=True)
    finally:
        for case in cases:
            if case.client is not None:
                await case.client.close()
            if not args.keep:
                await case.db.client.drop_database(case.db.db.name)
            await case.db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--histories", default="0,1250,12500", help="finished requests spread over 20 days")
    parser.add_argument("--per-hour", default="20,200,1000", help="requests uploaded within the last 50 minutes")
    parser.add_argument("--calls", type=int, default=60, help="calls per page and database (a multiple of 10)")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
