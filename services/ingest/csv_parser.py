"""Streaming CSV reader that applies every rule of the brief's section 2.

The same generator validates an upload (keeping nothing but the serial numbers seen) and later feeds the
fan-out from the stored file, so both paths agree on what a row means and memory stays flat as files grow.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import urlsplit

from shared.csv_format import INPUT_URLS, NAME, REQUIRED_COLUMNS, SERIAL, canonical_column
from shared.url_guard import BlockedAddressError, check_url, plain_name_needs_no_check

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

# whitespace as str.isspace() defines it (Python's \s is the same set) or a C0 control character; one regex
# search instead of two Python-level loops over every character: the hot spot of validating a large upload
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f]")
# the common case, checked without urlsplit: http(s), a plain host name, an optional port, any path. Every URL
# this matches is one url_problem() accepts anyway (when the SSRF guard also has nothing to say about its host:
# plain_name_needs_no_check); everything else (user info, IPv6, odd hosts) takes the full path below, so the
# fast path changes speed, never the verdict (tests/test_url_guard.py checks that on generated URLs).
_PLAIN_HTTP_URL = re.compile(r"(?i)https?://([a-z0-9][a-z0-9.-]*)(?::([1-9][0-9]{0,4}))?(?:[/?#].*)?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One thing wrong with the file; row 1 is the first data row, row 0 the header or the file itself."""

    row: int
    column: str | None
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"row": self.row, "column": self.column, "message": self.message}


@dataclass(frozen=True, slots=True)
class ProductRow:
    row: int
    serial_number: str
    product_name: str
    urls: list[str]
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int
    max_urls_per_row: int
    max_url_length: int
    # False: refuse URLs whose host the SSRF guard refuses without DNS (private IP literals, non-canonical or
    # non-ASCII spellings of addresses, localhost); names are checked when the compressor resolves them
    allow_private_urls: bool = False


class HeaderError(ValueError):
    """The header is unusable, so no row can be read."""

    def __init__(self, problems: list[RowProblem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def url_problem(url: str, max_length: int, *, allow_private: bool = False) -> str | None:
    """Why a URL (a CSV cell entry or a webhook) is not an absolute http(s) URL pixpress may fetch, or None."""
    if len(url) > max_length:
        return f"URL longer than {max_length} characters"
    if _SPACE_OR_CONTROL.search(url):
        return f"URL contains whitespace or control characters: {url[:80]!r}"
    plain = _PLAIN_HTTP_URL.fullmatch(url)
    if (
        plain
        and (plain.group(2) is None or int(plain.group(2)) <= 65535)
        and (allow_private or plain_name_needs_no_check(plain.group(1)))
    ):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError:
        return f"malformed URL: {url[:80]!r}"
    if parts.scheme.lower() not in ("http", "https"):
        if not parts.scheme:
            return f"not an absolute http(s) URL: {url[:80]!r}"
        return f"URL scheme {parts.scheme!r} is not allowed (only http and https): {url[:80]!r}"
    if not parts.hostname:
        return f"URL has no host: {url[:80]!r}"
    if port == 0:
        return f"URL has an invalid port: {url[:80]!r}"
    try:
        check_url(url, allow_private)
    except BlockedAddressError as exc:
        return f"{exc}: {url[:80]!r}"
    return None


class CsvReader:
    """Reads one CSV text stream; iterate it to get rows and problems in file order."""

    def __init__(self, stream: TextIO, limits: Limits) -> None:
        self._reader = csv.reader(stream, strict=True)
        self._limits = limits
        self.header: list[str] = []
        self._index: dict[str, int] = {}
        self.extra_columns: list[str] = []
        self.rows_seen = 0
        self.urls_seen = 0

    def read_header(self) -> None:
        try:
            header = next(self._reader)
        except StopIteration:
            raise HeaderError([RowProblem(0, None, "the file is empty")]) from None
        except csv.Error as exc:
            raise HeaderError([RowProblem(0, None, f"the header is not valid CSV: {exc}")]) from None
        self.header = [cell.strip() for cell in header]
        positions: dict[str, int] = {}
        problems: list[RowProblem] = []
        for position, name in enumerate(self.header):
            key = canonical_column(name)
            if key in positions and key in {canonical_column(c) for c in REQUIRED_COLUMNS}:
                problems.append(RowProblem(0, name, f"column {name!r} appears more than once"))
            positions.setdefault(key, position)
        missing = [c for c in REQUIRED_COLUMNS if canonical_column(c) not in positions]
        problems.extend(RowProblem(0, c, f"required column {c!r} is missing") for c in missing)
        if problems:
            raise HeaderError(problems)
        self._index = {c: positions[canonical_column(c)] for c in REQUIRED_COLUMNS}
        required_positions = set(self._index.values())
        self.extra_columns = [name for i, name in enumerate(self.header) if i not in required_positions]

    def __iter__(self) -> Iterator[ProductRow | RowProblem]:
        if not self._index:
            self.read_header()
        seen_serials: set[str] = set()
        limits = self._limits
        width = len(self.header)
        row_number = 0
        while True:
            try:
                cells = next(self._reader)
            except StopIteration:
                break
            except csv.Error as exc:
                row_number += 1
                yield RowProblem(row_number, None, f"not valid CSV: {exc}")
                return
            if not cells or all(not c.strip() for c in cells):
                continue  # blank lines carry no product
            row_number += 1
            self.rows_seen = row_number
            if row_number > limits.max_rows:
                yield RowProblem(row_number, None, f"the file has more than {limits.max_rows} rows")
                return
            if len(cells) != width:
                yield RowProblem(row_number, None, f"row has {len(cells)} cells but the header has {width}")
                continue
            yield from self._row(row_number, cells, seen_serials)

    def _row(self, number: int, cells: list[str], seen: set[str]) -> Iterator[ProductRow | RowProblem]:
        limits = self._limits
        serial = cells[self._index[SERIAL]].strip()
        name = cells[self._index[NAME]].strip()
        urls = [u.strip() for u in cells[self._index[INPUT_URLS]].split(",") if u.strip()]
        problems: list[RowProblem] = []
        if not serial:
            problems.append(RowProblem(number, SERIAL, "serial number is empty"))
        elif serial in seen:
            problems.append(RowProblem(number, SERIAL, f"serial number {serial!r} appears more than once"))
        else:
            seen.add(serial)
        if not name:
            problems.append(RowProblem(number, NAME, "product name is empty"))
        if not urls:
            problems.append(RowProblem(number, INPUT_URLS, "at least one image URL is required"))
        elif len(urls) > limits.max_urls_per_row:
            problems.append(
                RowProblem(number, INPUT_URLS, f"{len(urls)} URLs; at most {limits.max_urls_per_row} per row")
            )
        for url in urls:
            reason = url_problem(url, limits.max_url_length, allow_private=limits.allow_private_urls)
            if reason:
                problems.append(RowProblem(number, INPUT_URLS, reason))
        if problems:
            yield from problems
            return
        self.urls_seen += len(urls)
        required_positions = set(self._index.values())
        extra = {self.header[i]: cells[i] for i in range(len(cells)) if i not in required_positions}
        yield ProductRow(number, serial, name, urls, extra)
