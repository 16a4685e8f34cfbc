"""Streams a request's products, in row order, into the output CSV without holding the request in memory.

Rows go through a spooled temporary file (in memory up to a few MB, on disk beyond), then to MinIO.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from shared.csv_format import ERRORS, INPUT_URLS, NAME, OUTPUT_URLS, SERIAL, neutralise

SPOOL_BYTES = 8 * 1024 * 1024


@dataclass
class OutputSummary:
    products: int = 0
    images_done: int = 0
    images_failed: int = 0


def output_header(extra_columns: list[str]) -> list[str]:
    return [SERIAL, NAME, INPUT_URLS, OUTPUT_URLS, *extra_columns, ERRORS]


def output_row(product: dict[str, Any], extra_columns: list[str]) -> list[str]:
    outputs = product["output_image_urls"]
    errors = product["image_errors"]
    reasons = [f"image {i + 1}: {error}" for i, error in enumerate(errors) if error]
    extra = product.get("extra", {})
    cells = [
        product["serial_number"],
        product["product_name"],
        ",".join(product["input_image_urls"]),
        ",".join(url or "" for url in outputs),
        *(extra.get(column, "") for column in extra_columns),
        "; ".join(reasons),
    ]
    return [neutralise(cell) for cell in cells]


async def write_output_csv(
    products: AsyncIterator[dict[str, Any]], extra_columns: list[str]
) -> tuple[tempfile.SpooledTemporaryFile, int, OutputSummary]:
    """Returns the spooled file rewound to the start, its size, and exact image counts."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - the caller closes it
    text = io.TextIOWrapper(spool, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow(output_header(extra_columns))
    summary = OutputSummary()
    async for product in products:
        writer.writerow(output_row(product, extra_columns))
        summary.products += 1
        for url, settled in zip(product["output_image_urls"], product["settled"], strict=True):
            if url:
                summary.images_done += 1
            elif settled:
                summary.images_failed += 1
    text.flush()
    text.detach()
    size = spool.tell()
    spool.seek(0)
    return spool, size, summary
