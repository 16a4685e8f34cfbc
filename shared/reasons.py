"""Failure reasons shown to clients (products API, output CSV, webhook history): short, printable, ours.

A reason may end up in a spreadsheet, a dashboard or a log viewer, so it never carries what a remote server
wrote (a status line, a header, a body) and never markup: network errors are described by what happened,
not by the exception's text, and every reason goes through :func:`short_reason` before it is stored.
"""

from __future__ import annotations

import re

import aiohttp

REASON_LIMIT = 200
_UNSAFE = re.compile(r"[^\x20-\x7e]|[<>`]")  # printable ASCII only, and nothing that opens markup


def short_reason(text: str, limit: int = REASON_LIMIT) -> str:
    """One line of printable ASCII without ``<``, ``>`` or backticks, at most ``limit`` characters."""
    flat = _UNSAFE.sub("?", " ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe_client_error(exc: aiohttp.ClientError, peer: str) -> str:
    """What went wrong talking to ``peer`` ("image host", "webhook receiver"), in our words.

    aiohttp's messages quote the peer's bytes (a malformed status line, a bad chunk header), so only the kind
    of failure and, for socket errors, the operating system's own message are used.
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"the {peer} closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the {peer}'s body was cut short or malformed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"malformed HTTP answer from the {peer}"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection error: {exc.strerror or type(exc).__name__}"
    return f"connection failed ({type(exc).__name__})"
