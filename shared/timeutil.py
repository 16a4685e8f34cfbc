"""One clock for every service: timezone-aware UTC, so stored and compared times agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_HOUR = "%Y-%m-%dT%H"


def utcnow() -> datetime:
    return datetime.now(UTC)


def hour_key(moment: datetime) -> str:
    """The UTC hour ``moment`` falls in, as ``YYYY-MM-DDTHH``: sortable, and an equality an index serves."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(_HOUR)


def hour_keys(first: str, stop: str) -> list[str]:
    """Every hour key from ``first`` up to, not including, ``stop``."""
    moment = datetime.strptime(first, _HOUR).replace(tzinfo=UTC)
    keys = []
    while (key := hour_key(moment)) < stop:
        keys.append(key)
        moment += timedelta(hours=1)
    return keys


def previous_hour(key: str) -> str:
    return hour_key(datetime.strptime(key, _HOUR).replace(tzinfo=UTC) - timedelta(hours=1))


def next_hour(key: str) -> str:
    return hour_key(datetime.strptime(key, _HOUR).replace(tzinfo=UTC) + timedelta(hours=1))


def hours_down(top: str, bottom: str, count: int) -> list[str]:
    """Up to ``count`` hour keys from ``top`` down to ``bottom`` (both included), newest first; none when ``top``
    is below ``bottom``."""
    moment = datetime.strptime(top, _HOUR).replace(tzinfo=UTC)
    keys: list[str] = []
    while len(keys) < count and (key := hour_key(moment)) >= bottom:
        keys.append(key)
        moment -= timedelta(hours=1)
    return keys


def parse_hour_key(text: str) -> str:
    """``text`` if it is an hour key exactly as :func:`hour_key` writes it, else ValueError."""
    if hour_key(datetime.strptime(text, _HOUR)) != text:
        raise ValueError(f"not an hour key: {text!r}")
    return text
