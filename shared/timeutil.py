"""One clock for every service: timezone-aware UTC, so stored and compared times agree."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
