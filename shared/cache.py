"""The output cache's names and the one rule the compressor and retention must agree on (docs/cache.md).

With ``PIXPRESS_CACHE=on`` an output is stored under a key derived from what determines its bytes: the SHA-256 of
the source bytes and the image policy with every setting that changes output bytes. Two URLs serving the same
bytes, and every re-upload of them, share one object, ``images/c/<key>.<ext>``, under ``images/`` like every
output, so public-read like them.

Such an object belongs to no request, so retention cannot delete it with one. The agreement that keeps a reused
object from being deleted under a request that points to it uses the object's own ``Last-Modified`` in MinIO,
which a PUT sets and a copy onto itself (``Storage.touch``) moves forward, as its "last used" time:

* retention deletes a shared object only when no kept result points to it **and** it is older than the retention
  window (``may_delete``);
* a compressor reuses an object only while it is younger than half the window, moving its time forward when it is
  older than a quarter (``reuse_decision``). An object in the second half of the window may be deleted at any
  moment, so it is neither reused nor written again: the image is compressed and stored under its request.

So between a compressor's decision to reuse an object and the earliest moment retention could delete it lie at
least half the window (12 hours at the minimum of one day): ample time for the result to reach the ``results``
collection, whose references then keep the object for as long as the request is kept.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from enum import Enum, StrEnum

SHARED_PREFIX = "images/c/"
_SHARED_KEY = re.compile(r"images/c/[0-9a-f]{64}\.(jpg|webp)")
# validators longer than this are not remembered (a message carries them); real ones are a few dozen characters
MAX_ETAG_LENGTH = 256
MAX_LAST_MODIFIED_LENGTH = 64


class CacheKind(StrEnum):
    """Why an image needed no codec run (the ``cache`` field of a result)."""

    REVALIDATED = "revalidated"  # the origin answered 304 Not Modified: not even downloaded
    SAME_BYTES = "same_bytes"  # downloaded, and these exact bytes were compressed before at the same settings


class Reuse(Enum):
    """What a compressor may do with a shared object it found (``reuse_decision``)."""

    FRESH = "fresh"  # reuse it as it is
    REFRESH = "refresh"  # reuse it, after moving its last-used time forward
    EXPIRING = "expiring"  # retention may delete it any moment: neither reuse nor rewrite it


def url_record_id(url: str) -> str:
    """``_id`` of a URL's record in ``url_validators``: fixed length and index-friendly whatever the URL holds."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def shared_object_key(content_key: str, extension: str) -> str:
    return f"{SHARED_PREFIX}{content_key}.{extension}"


def is_shared_object(key: str) -> bool:
    return _SHARED_KEY.fullmatch(key) is not None


def reuse_decision(last_modified: datetime, now: datetime, retention_days: int | None) -> Reuse:
    """Without retention nothing is ever deleted, so every object is fresh."""
    if retention_days is None:
        return Reuse.FRESH
    age = now - last_modified
    window = timedelta(days=retention_days)
    if age >= window / 2:
        return Reuse.EXPIRING
    if age >= window / 4:
        return Reuse.REFRESH
    return Reuse.FRESH


def may_delete(last_modified: datetime, now: datetime, retention_days: int) -> bool:
    """Retention's half of the agreement; the caller also checks that no kept result points to the object."""
    return now - last_modified >= timedelta(days=retention_days)


def printable_validator(value: str | None, limit: int) -> str | None:
    """A validator as an origin sent it, if it can be sent back as a header: printable ASCII, bounded length."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > limit or not value.isascii() or not value.isprintable():
        return None
    return value
