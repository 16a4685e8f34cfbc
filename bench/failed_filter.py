"""The console's failed filter: what a page of ``GET /requests/{id}/products?failed=true`` costs, sparse and dense
(a benchmark script, not a test). Needs the running stack (`make up`).

    .venv/bin/python -m bench.failed_filter

Stages two finished requests straight into the stack's database the way ingest and the aggregator record them
(products and failed results only; successes carry no ``failed_bucket`` key, so they cost these queries nothing):
one of 1,000,000 rows with 3 failures (rows 1, 500,000 and 999,999: the filter walks every row bucket), one of
100,000 rows whose first 5,000 rows failed. Follows ``next`` page by page (10 products a page) and prints the
pages, the products found and the median and maximum time of a page; then deletes what it staged.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from services.aggregator.tracker import result_document
from services.ingest.csv_parser import ProductRow
from services.ingest.records import new_request_document, product_document
from shared.messages import ImageResult
from testkit.stack import port, service_settings

API = f"http://127.0.0.1:{port('API')}"


async def stage(db: Any, total: int, failed: list[int]) -> str:
    request_id = str(uuid.uuid4())
    document = new_request_document(
        request_id,
        csv_key=f"uploads/{request_id}/input.csv",
        csv_sha256="-",
        products_total=total,
        images_total=total,
        header=["Serial Number", "Product Name", "Input Image Urls"],
        extra_columns=[],
        webhook_url=None,
        idempotency_key=None,
    )
    document.update(status="Completed", fanout_complete=True)
    await db.requests.insert_one(document)
    products, results = [], []
    for row in failed:
        product = product_document(request_id, ProductRow(row, f"S{row}", f"P{row}", ["https://example.com/x.jpg"]))
        products.append(product)
        result = ImageResult(
            request_id=request_id, product_id=product["_id"], row=row, index=0, ok=False, error="HTTP 404"
        )
        results.append(result_document(result))
    for start in range(0, len(products), 1000):
        await db.products.insert_many(products[start : start + 1000])
        await db.results.insert_many(results[start : start + 1000])
    return request_id


async def walk(http: aiohttp.ClientSession, request_id: str, max_pages: int) -> tuple[list[float], int]:
    query, found = "failed=true&limit=10", 0
    times: list[float] = []
    while query and len(times) < max_pages:
        started = time.perf_counter()
        async with http.get(f"{API}/requests/{request_id}/products?{query}") as response:
            page = await response.json()
        times.append((time.perf_counter() - started) * 1000)
        found += len(page["items"])
        query = page["next"].split("?", 1)[1] if "next" in page else ""
    return times, found


async def main() -> None:
    settings = service_settings()
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo_url.get_secret_value())
    db = client[settings.mongo_db]
    cases = [
        ("1,000,000 rows, 3 failures", await stage(db, 1_000_000, [1, 500_000, 999_999]), 100),
        ("100,000 rows, first 5,000 failed (3 pages)", await stage(db, 100_000, list(range(1, 5001))), 3),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            for name, request_id, max_pages in cases:
                times, found = await walk(http, request_id, max_pages)
                median = sorted(times)[len(times) // 2]
                print(
                    f"{name}: {len(times)} pages, {found} products,"
                    f" page median {median:.1f} ms, max {max(times):.1f} ms"
                )
    finally:
        for _name, request_id, _pages in cases:
            await db.requests.delete_one({"_id": request_id})
            await db.products.delete_many({"request_id": request_id})
            await db.results.delete_many({"request_id": request_id})
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
