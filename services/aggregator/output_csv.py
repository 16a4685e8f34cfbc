"""Streams a request's products and results, both in row order, into the output CSV without holding either.

Two sorted cursors (products by row; results by row and index) are merged like a join; rows go through a
spooled temporary file (in memory up to a few MB, on disk beyond), then to MinIO.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from shared.cache import CacheKind
from shared.csv_format import ERRORS, INPUT_URLS, NAME, OUTPUT_URLS, SERIAL, neutralise

SPOOL_BYTES = 8 * 1024 * 1024


@dataclass
class OutputSummary:
    images_done: int = 0
    images_failed: int = 0
    images_cached: int = 0  # of images_done
    images_revalidated: int = 0  # of images_cached


@dataclass
class Slots:
    """One product's outcome per input URL (None where no result exists)."""

    outputs: list[str | None]
    errors: list[str | None]
    settled: list[bool]
    cache: list[str | None]  # how a cached output was reused ("revalidated", "same_bytes"), None when made


def output_header(extra_columns: list[str]) -> list[str]:
    """Extra column names come from the client's CSV like any cell, so they are neutralised like any cell."""
    return [SERIAL, NAME, INPUT_URLS, OUTPUT_URLS, *(neutralise(name) for name in extra_columns), ERRORS]


def output_row(product: dict[str, Any], slots: Slots, extra_columns: list[str]) -> list[str]:
    reasons = [f"image {i + 1}: {error}" for i, error in enumerate(slots.errors) if error]
    extra = product.get("extra", {})
    cells = [
        product["serial_number"],
        product["product_name"],
        ",".join(product["input_image_urls"]),
        ",".join(url or "" for url in slots.outputs),
        *(extra.get(column, "") for column in extra_columns),
        "; ".join(reasons),
    ]
    return [neutralise(cell) for cell in cells]


async def join_results(
    products: AsyncIterator[dict[str, Any]], results: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[tuple[dict[str, Any], Slots]]:
    """Pairs each product with its slots; both iterators must be sorted by row (results then by index)."""
    pending: dict[str, Any] | None = await anext(results, None)
    async for product in products:
        count = len(product["input_image_urls"])
        slots = Slots([None] * count, [None] * count, [False] * count, [None] * count)
        while pending is not None and pending["row"] < product["row"]:
            pending = await anext(results, None)  # a result without a product: ignore it
        while pending is not None and pending["row"] == product["row"]:
            index = pending["index"]
            if 0 <= index < count:
                slots.outputs[index] = pending.get("output_url")
                slots.errors[index] = pending.get("error")
                slots.settled[index] = True
                slots.cache[index] = pending.get("cache") if pending.get("cached") else None
            pending = await anext(results, None)
        yield product, slots


async def write_output_csv(
    rows: AsyncIterator[tuple[dict[str, Any], Slots]], extra_columns: list[str]
) -> tuple[BinaryIO, int, OutputSummary]:
    """Returns the spooled file rewound to the start, its size, and exact image counts."""
    # a binary file in memory up to SPOOL_BYTES, then on disk (typeshed's SpooledTemporaryFile is not a BinaryIO)
    spool = cast(BinaryIO, tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))  # noqa: SIM115 - the caller closes it
    text = io.TextIOWrapper(spool, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow(output_header(extra_columns))
    summary = OutputSummary()
    async for product, slots in rows:
        writer.writerow(output_row(product, slots, extra_columns))
        for url, settled, cache in zip(slots.outputs, slots.settled, slots.cache, strict=True):
            if url:
                summary.images_done += 1
                summary.images_cached += cache is not None
                summary.images_revalidated += cache == CacheKind.REVALIDATED
            elif settled:
                summary.images_failed += 1
    text.flush()
    text.detach()
    size = spool.tell()
    spool.seek(0)
    return spool, size, summary
