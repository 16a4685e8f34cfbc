"""The downloader against a real local HTTP server with faults, and with the SSRF guard on (whose decisions
themselves are tested in test_url_guard.py)."""

from __future__ import annotations

import time

import aiohttp
import pytest

from shared.download import DownloadError, DownloadLimits, download
from shared.url_guard import guarded_connector
from tests.support.photos import photo_bytes
from tests.support.servers import ImageHost
from tests.support.spellings import LOOPBACK_SPELLINGS, spelled

pytestmark = pytest.mark.pure  # no server of the stack: `make test-fast` runs it

OPEN = DownloadLimits(max_bytes=5_000_000, max_redirects=3, total_timeout=3.0, allow_private=True)


async def fetch(url: str, limits: DownloadLimits = OPEN) -> bytes:
    connector = guarded_connector(limits.allow_private)
    timeout = aiohttp.ClientTimeout(sock_connect=1.0, sock_read=2.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await download(session, url, limits)


async def test_photo_downloads_whole(image_host: ImageHost):
    body = photo_bytes("rocket.jpg")
    assert await fetch(image_host.add("rocket.jpg", body)) == body


@pytest.mark.parametrize(
    ("code", "transient"), [(404, False), (410, False), (403, False), (429, True), (500, True), (503, True)]
)
async def test_status_codes_are_classified(image_host: ImageHost, code: int, transient: bool):
    with pytest.raises(DownloadError) as info:
        await fetch(image_host.url(f"/status/{code}"))
    assert info.value.transient is transient
    assert f"HTTP {code}" in info.value.reason


async def test_hanging_host_fails_in_bounded_time(image_host: ImageHost):
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        await fetch(image_host.url("/hang"))
    assert info.value.transient
    assert time.monotonic() - started < 5


async def test_endless_body_stops_at_the_byte_limit(image_host: ImageHost):
    limits = DownloadLimits(max_bytes=1_000_000, max_redirects=0, total_timeout=10, allow_private=True)
    with pytest.raises(DownloadError, match="larger than the limit") as info:
        await fetch(image_host.url("/huge"), limits)
    assert not info.value.transient


async def test_redirects_are_followed_up_to_the_limit(image_host: ImageHost):
    image_host.add("cat.png", photo_bytes("chelsea.png"), "image/png")
    assert await fetch(image_host.url("/redirect/3/cat.png")) == photo_bytes("chelsea.png")
    with pytest.raises(DownloadError, match="more than 3 redirects"):
        await fetch(image_host.url("/redirect/4/cat.png"))


async def test_zero_byte_body_fails(image_host: ImageHost):
    with pytest.raises(DownloadError, match="empty"):
        await fetch(image_host.add("empty.jpg", b""))


# --- the guard at fetch time (issue 11): spellings of 127.0.0.1 never reach the host ------------------------

GUARDED_HOSTS = {"plain": "127.0.0.1", **LOOPBACK_SPELLINGS}


@pytest.mark.parametrize("host", list(GUARDED_HOSTS.values()), ids=list(GUARDED_HOSTS))
async def test_a_loopback_host_in_any_spelling_is_refused_at_once_and_never_fetched(image_host: ImageHost, host: str):
    guarded = DownloadLimits(max_bytes=1_000_000, max_redirects=3, total_timeout=3, allow_private=False)
    url = spelled(image_host.add("a.jpg", photo_bytes("rocket.jpg")), host)
    with pytest.raises(DownloadError) as info:
        await fetch(url, guarded)
    assert not info.value.transient, info.value.reason
    assert image_host.hits["a.jpg"] == 0


async def test_the_socket_factory_refuses_an_ip_literal_the_url_check_never_saw(image_host: ImageHost):
    """The connect-time backstop on its own: aiohttp connects to IP literals without asking the resolver."""
    url = image_host.add("a.jpg", photo_bytes("rocket.jpg"))
    async with aiohttp.ClientSession(connector=guarded_connector(False)) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            async with session.get(url):
                pass
    assert "not allowed" in str(info.value.os_error)
    assert image_host.hits["a.jpg"] == 0
