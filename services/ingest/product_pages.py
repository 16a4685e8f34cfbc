"""Which rows a products page holds: the next ``limit`` rows, or the next rows with a failed image.

Both read by keys only, so a page costs what it selects, never what the request or the database holds:

* all products: rows ``offset+1 .. offset+limit`` by their ``_id`` (rows are numbered 1..N without gaps);
* ``failed=true``: the failed results of a window of consecutive row buckets, by ``failed_bucket`` (an index on a
  string key FerretDB pushes down, see :func:`shared.database.failed_bucket`). The window starts at one bucket
  (64 rows) and doubles, up to 64 buckets per query, while it finds too few; one page searches at most
  :data:`MAX_SEARCHED_ROWS` rows. A request with failures everywhere is answered from its first bucket or two; one
  with a failure in its last row of 1,000,000 is crossed in 16 pages of 65,536 rows, each a few index lookups
  that return nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo.asynchronous.collection import AsyncCollection

from shared.database import FAILED_BUCKET_ROWS, IDS_PER_QUERY, failed_bucket

MAX_WINDOW_BUCKETS = 64  # buckets per query: a $in of 64 keys, at most 4,096 rows' failures
MAX_SEARCHED_ROWS = 65_536  # rows one failed page searches before it answers (maybe with nothing, and a `next`)
assert MAX_WINDOW_BUCKETS <= IDS_PER_QUERY


@dataclass(frozen=True)
class RowSelection:
    rows: list[int]  # ascending
    searched_to: int  # the last row this page has accounted for; the next page starts after it


def all_rows(offset: int, limit: int, total: int) -> RowSelection:
    last = min(offset + limit, total)
    return RowSelection(list(range(offset + 1, last + 1)), max(last, offset))


async def failed_rows(results: AsyncCollection, request_id: str, after: int, limit: int, total: int) -> RowSelection:
    """Up to ``limit`` rows after row ``after`` that have at least one failed image, in row order."""
    found: set[int] = set()
    bucket = after // FAILED_BUCKET_ROWS  # the bucket of row after + 1
    # the last bucket to read: the request's last, or the one holding row after + MAX_SEARCHED_ROWS
    last_bucket = min(total - 1, after + MAX_SEARCHED_ROWS - 1) // FAILED_BUCKET_ROWS
    horizon = after + MAX_SEARCHED_ROWS  # rows past it are the next page's, even when this bucket holds them
    window = 1
    searched_to = after
    while bucket <= last_bucket:
        buckets = range(bucket, min(bucket + window, last_bucket + 1))
        keys = [failed_bucket(request_id, b * FAILED_BUCKET_ROWS + 1) for b in buckets]
        cursor = results.find({"failed_bucket": {"$in": keys}}, projection={"row": 1})
        found.update(row for document in await cursor.to_list(None) if after < (row := document["row"]) <= horizon)
        bucket = buckets[-1] + 1
        searched_to = min(bucket * FAILED_BUCKET_ROWS, total, horizon)
        if len(found) >= limit:
            rows = sorted(found)[:limit]
            return RowSelection(rows, rows[-1])
        window = min(window * 2, MAX_WINDOW_BUCKETS)
    return RowSelection(sorted(found), max(searched_to, after))
