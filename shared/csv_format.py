"""Column names of the input and output CSV, shared by ingest (which reads) and the aggregator (which writes)."""

from __future__ import annotations

SERIAL = "Serial Number"
NAME = "Product Name"
INPUT_URLS = "Input Image Urls"
OUTPUT_URLS = "Output Image Urls"
ERRORS = "Errors"
REQUIRED_COLUMNS = (SERIAL, NAME, INPUT_URLS)

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def canonical_column(name: str) -> str:
    """Header cells match after trimming and ignoring case."""
    return name.strip().casefold()


def neutralise(cell: str) -> str:
    """Prefix a quote to cells a spreadsheet would run as a formula (OWASP CSV injection)."""
    if cell.startswith(_FORMULA_PREFIXES):
        return "'" + cell
    return cell
