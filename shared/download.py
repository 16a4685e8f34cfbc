"""Download one image with hard limits: bytes, time, redirects and SSRF checks on every hop.

The compressor fetches every image with it, and ingest the originals it shows as thumbnails in the console
(services/ingest/thumbnails.py): one downloader, so a URL a browser asks ingest to fetch meets exactly the guard and
limits the compressor applies. Errors are classified here because only the HTTP layer knows whether trying again can
help.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from shared.cache import MAX_ETAG_LENGTH, MAX_LAST_MODIFIED_LENGTH, printable_validator
from shared.reasons import describe_client_error
from shared.settings import Settings
from shared.url_guard import BlockedAddressError, check_url, guarded_connector, refusal_behind

_REDIRECTS = {301, 302, 303, 307, 308}


class DownloadError(Exception):
    """Why an image could not be fetched; ``transient`` says whether a later attempt may succeed."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class DownloadLimits:
    max_bytes: int
    max_redirects: int
    total_timeout: float
    allow_private: bool


@dataclass(frozen=True)
class Validators:
    """An origin's validators for what it served (``ETag``, ``Last-Modified``), as it sent them."""

    etag: str | None = None
    last_modified: str | None = None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)

    def conditional_headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclass(frozen=True)
class Fetched:
    """A download's outcome: the body and the validators that came with it, or ``not_modified`` (a 304 to a
    conditional request: the origin still serves what those validators describe)."""

    body: bytes = b""
    validators: Validators = Validators()
    not_modified: bool = False


async def download(session: aiohttp.ClientSession, url: str, limits: DownloadLimits) -> bytes:
    """Return the body of ``url`` or raise :class:`DownloadError`; never reads more than ``max_bytes``."""
    return (await fetch(session, url, limits)).body


async def fetch(
    session: aiohttp.ClientSession, url: str, limits: DownloadLimits, known: Validators | None = None
) -> Fetched:
    """Like :func:`download`, conditional when ``known`` holds validators: every hop of the redirect chain carries
    If-None-Match / If-Modified-Since, and a 304 at its end comes back as ``not_modified`` without a body."""
    try:
        async with asyncio.timeout(limits.total_timeout):
            return await _follow(session, url, limits, known or Validators())
    except aiohttp.SocketTimeoutError:
        # the session's sock_read timeout: the host stopped sending (a hang), not the overall download limit
        raise DownloadError(
            f"timed out after {_seconds(session.timeout.sock_read)} without data", transient=True
        ) from None
    except aiohttp.ConnectionTimeoutError:
        raise DownloadError(
            f"timed out connecting after {_seconds(session.timeout.sock_connect)}", transient=True
        ) from None
    except TimeoutError:
        raise DownloadError(f"timed out after {limits.total_timeout:g}s", transient=True) from None
    except DownloadError:
        raise
    except aiohttp.ClientError as exc:
        blocked = refusal_behind(exc)
        if blocked is not None:
            raise DownloadError(str(blocked), transient=False) from None
        if isinstance(exc, aiohttp.InvalidURL):
            raise DownloadError("invalid URL", transient=False) from None
        raise DownloadError(describe_client_error(exc, "image host"), transient=True) from None
    except BlockedAddressError as exc:
        raise DownloadError(str(exc), transient=False) from None


def _seconds(value: float | None) -> str:
    return "?s" if value is None else f"{value:g}s"


async def _follow(session: aiohttp.ClientSession, url: str, limits: DownloadLimits, known: Validators) -> Fetched:
    target: URL = check_url(url, limits.allow_private)
    headers = known.conditional_headers()
    for _hop in range(limits.max_redirects + 1):
        # the URL object the guard decided on is the one aiohttp connects with: no second parse
        async with session.get(target, allow_redirects=False, headers=headers) as response:
            if response.status in _REDIRECTS:
                location = response.headers.get("Location")
                if not location:
                    raise DownloadError(f"HTTP {response.status} without a Location header", transient=False)
                # joined as text, so the guard sees the host as the Location header wrote it (non-ASCII included)
                absolute = urljoin(str(target), location)
                if not absolute.lower().startswith(("http://", "https://")):
                    raise DownloadError("redirect to a non-http(s) URL", transient=False)
                try:
                    target = check_url(absolute, limits.allow_private)
                except BlockedAddressError as exc:
                    raise DownloadError(f"redirect refused: {exc}", transient=False) from None
                continue
            if response.status == 304 and headers:
                return Fetched(not_modified=True)
            _raise_for_status(response.status)
            body = await _read_limited(response, limits.max_bytes)
            return Fetched(body, _validators(response))
    raise DownloadError(f"more than {limits.max_redirects} redirects", transient=False)


def _validators(response: aiohttp.ClientResponse) -> Validators:
    """The validators worth remembering: ones that can be sent back as they came, of bounded length."""
    return Validators(
        printable_validator(response.headers.get("ETag"), MAX_ETAG_LENGTH),
        printable_validator(response.headers.get("Last-Modified"), MAX_LAST_MODIFIED_LENGTH),
    )


def _raise_for_status(status: int) -> None:
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500 or status == 408:
        raise DownloadError(f"HTTP {status} from image host", transient=True)
    raise DownloadError(f"HTTP {status} from image host", transient=False)


async def _read_limited(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise DownloadError(f"image is {declared} bytes; the limit is {max_bytes}", transient=False)
    # the chunks as they arrived (aiohttp's flow control keeps what is buffered to a few hundred KiB, so the
    # limit is overshot by at most that much), joined once at the end: growing a bytearray and copying it into
    # bytes cost ~0.6 ms more CPU per 650 KB photo (fresh pages for every reallocation)
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise DownloadError(f"image is larger than the limit of {max_bytes} bytes", transient=False)
    if not size:
        raise DownloadError("empty response body (0 bytes)", transient=False)
    return b"".join(parts)


def download_limits(settings: Settings) -> DownloadLimits:
    """The limits every image download runs with (``PIXPRESS_MAX_IMAGE_BYTES``, ``_MAX_REDIRECTS``, …)."""
    return DownloadLimits(
        max_bytes=settings.max_image_bytes,
        max_redirects=settings.max_redirects,
        total_timeout=settings.download_timeout,
        allow_private=settings.allow_private_urls,
    )


def download_session(settings: Settings, connections: int) -> aiohttp.ClientSession:
    """A session whose every connection goes through the SSRF guard, with the connect and read timeouts."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout)
    connector = guarded_connector(settings.allow_private_urls, limit=connections)
    return aiohttp.ClientSession(timeout=timeout, connector=connector, headers={"User-Agent": "pixpress/0.1"})
