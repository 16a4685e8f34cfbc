"""How answers look in a terminal: rich tables, and text from a CSV or a server made safe to print.

Product names, URLs and error messages come from whoever wrote the CSV or runs the image host. Printed as they are,
an escape sequence in a product name could rewrite the terminal (move the cursor, retitle the window, hide
text) and ``[bold]`` would be taken as rich markup. So every such string goes through :func:`safe`: control and
other invisible characters (C0, C1, DEL, bidirectional overrides) are shown as ``\\x..`` escapes, and cells are
:class:`rich.text.Text`, never markup.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from shared.api_models import ProductView, ProgressView, RowError, StatusView


def safe(value: object) -> str:
    """``value`` as text with every non-printable character escaped (``\\x1b``, ``\\u202e``)."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def cell(value: object) -> Text:
    return Text(safe(value))


def pretty_json(body: Any) -> str:
    """JSON for ``--json``: the API's own body, indented; non-ASCII escaped, so nothing in it reaches the terminal
    as a control character."""
    return json.dumps(body, indent=2, ensure_ascii=True)


def row_errors(console: Console, errors: list[RowError]) -> None:
    """A refused CSV's problems; row 1 is the first data row, row 0 the header or the whole file."""
    table = Table(title="Problems in the CSV (row 1 = first data row, 0 = header or whole file)", title_justify="left")
    table.add_column("Row", justify="right")
    table.add_column("Column")
    table.add_column("Message", overflow="fold")
    for error in errors:
        table.add_row(str(error.row), cell(error.column or "-"), cell(error.message))
    console.print(table)


def _age(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _saved(status: StatusView) -> str:
    savings = status.progress.savings_percent
    return "-" if savings is None else f"{savings:.1f} %"


def requests_table(console: Console, statuses: list[StatusView]) -> None:
    now = datetime.now(UTC)
    table = Table()
    for name, justify in (
        ("Request", "left"),
        ("Status", "left"),
        ("Done", "right"),
        ("Failed", "right"),
        ("Images", "right"),
        ("Saved", "right"),
        ("Created (UTC)", "left"),
        ("Age", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for status in statuses:
        progress = status.progress
        table.add_row(
            status.request_id,
            status.status.value,
            str(progress.images_done),
            str(progress.images_failed),
            str(progress.images_total),
            _saved(status),
            status.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            _age(status.created_at, now),
        )
    console.print(table)


def _reused(progress: ProgressView) -> str:
    """Outputs the output cache reused (docs/cache.md), split by how: unchanged at the host, or same bytes."""
    if not progress.images_cached:
        return "0"
    same_bytes = progress.images_cached - progress.images_revalidated
    return f"{progress.images_cached} ({progress.images_revalidated} unchanged at the host, {same_bytes} same bytes)"


def status_table(console: Console, status: StatusView) -> None:
    progress = status.progress
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows: list[tuple[str, object]] = [
        ("request", status.request_id),
        ("status", status.status.value),
        ("images", f"{progress.images_settled} of {progress.images_total} settled ({progress.percent:g} %)"),
        ("done / failed", f"{progress.images_done} / {progress.images_failed}"),
        ("reused", _reused(progress)),
        ("bytes", f"{progress.bytes_in:,} in, {progress.bytes_out:,} out, saved {_saved(status)}"),
        ("created", status.created_at.isoformat()),
        ("updated", status.updated_at.isoformat()),
    ]
    if status.output_csv_url:
        rows.append(("output CSV", status.output_csv_url))
    if status.error:
        rows.append(("error", status.error))
    for name, value in rows:
        table.add_row(name, cell(value))
    console.print(table)


def failed_images(product: ProductView) -> list[dict[str, Any]]:
    """One entry per failed image of ``product``: its row, serial number, URL and reason."""
    return [
        {"row": product.row, "serial_number": product.serial_number, "url": url, "error": error}
        for url, error in zip(product.input_image_urls, product.image_errors, strict=False)
        if error
    ]


def failures_table(console: Console, failures: list[dict[str, Any]]) -> None:
    table = Table()
    table.add_column("Row", justify="right")
    table.add_column("Serial Number")
    table.add_column("Image URL", overflow="fold")
    table.add_column("Reason", overflow="fold")
    for failure in failures:
        table.add_row(str(failure["row"]), cell(failure["serial_number"]), cell(failure["url"]), cell(failure["error"]))
    console.print(table)
