"""SSRF protection for every outbound URL (images and webhooks): decide on the host the HTTP client will use.

:func:`check_url` parses the URL with yarl, the library aiohttp parses with, and returns that very ``URL``
object; callers hand it to aiohttp unchanged, so there is no second parse that could see another host. yarl
normalises the host the way the connection will (IDNA/UTS 46: fullwidth digits, ideographic full stops,
circled letters and case all fold to ASCII), and the guard decides on the result:

* an IP literal is refused when it is loopback, private, link-local (cloud metadata), CGNAT, multicast,
  reserved or unspecified, including IPv4 carried inside IPv6 (mapped, compatible, 6to4, NAT64);
* a host typed with non-ASCII characters that normalises to an IP address is refused whatever the address:
  nobody writes 127.0.0.1 in fullwidth digits or with ideographic full stops except to slip past a check;
* a host that ends in a number but is not canonical dotted-decimal IPv4 (``127.1``, ``0177.0.0.1``,
  ``0x7f.1``, ``2130706433``, ``127.0.0.1.``) is refused here, not left to the client: the system resolver
  reads those as addresses (inet_aton), and whether aiohttp rejects them first depends on its version;
* ``localhost``, ``*.localhost`` and hosts with characters no DNS name has (``%``-escapes) are refused;
* any other name is allowed here and decided when it is resolved.

The connection itself is guarded too (:func:`guarded_connector`), as the backstop for everything above:
the resolver drops blocked addresses of a name, so the address checked is the address connected to (no DNS
rebinding gap), and a socket factory refuses a blocked address just before ``connect()``, which covers IP
literals as well (aiohttp never sends those through the resolver).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from string import hexdigits
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

_EXTRA_BLOCKED = (
    ipaddress.ip_network("100.64.0.0/10"),  # CGNAT
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
    ipaddress.ip_network("64:ff9b:1::/48"),  # NAT64 for local use (RFC 8215): translates into private networks
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DNS_NAME = re.compile(r"[a-z0-9_.-]+")
_SCHEMES = frozenset({"http", "https"})


class BlockedAddressError(OSError):
    """The URL is refused for good: its target is a blocked address or a host spelling the guard does not take.

    An ``OSError`` so that raising it inside aiohttp's resolver or socket factory travels like a connect error.
    """


def refusal_behind(exc: BaseException) -> BlockedAddressError | None:
    """The guard's refusal behind an aiohttp error (raised in the resolver or the socket factory), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BlockedAddressError):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__ or seen.__context__
    return None


def _ip_blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global alone misses some ranges on Python 3.11 (::/8 such as ::100 counts as global there)
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_private or ip.is_loopback:
        return True
    if ip.is_link_local or ip.is_unspecified or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return True
    return any(ip in network for network in _EXTRA_BLOCKED if network.version == ip.version)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and routes to (6to4, NAT64, IPv4-compatible), if any."""
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip.packed[:12] == bytes(12) and int(ip) > 0xFFFF):
        return ipaddress.IPv4Address(ip.packed[12:])
    return None


def address_blocked(address: str) -> bool:
    """True for loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved and unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _ip_blocked(ip.ipv4_mapped)
        embedded = _embedded_ipv4(ip)
        if embedded is not None and _ip_blocked(embedded):
            return True
    return _ip_blocked(ip)


def ends_in_a_number(host: str) -> bool:
    """The WHATWG URL standard's test for a host that is meant as an IPv4 address in some spelling."""
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    last = labels[-1]
    if last.isascii() and last.isdigit():
        return True
    return last[:2].lower() == "0x" and all(c in hexdigits for c in last[2:])


def plain_name_needs_no_check(host: str) -> bool:
    """For an ASCII host of letters, digits, dots and hyphens: True when :func:`check_url` would certainly allow
    it, so bulk validation can skip the full parse. Numeric-looking hosts and localhost take the full check."""
    if ends_in_a_number(host):
        return False
    name = host.rstrip(".").lower()
    return name != "localhost" and not name.endswith(".localhost")


def check_url(url: str | URL, allow_private: bool) -> URL:
    """Return the ``yarl.URL`` to hand to aiohttp, or raise :class:`BlockedAddressError` saying why not."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        host = parsed.raw_host
    except (ValueError, UnicodeError) as exc:
        raise BlockedAddressError(f"malformed URL ({type(exc).__name__})") from None
    if parsed.scheme not in _SCHEMES:
        raise BlockedAddressError("only http and https URLs are allowed")
    if not host:
        raise BlockedAddressError("URL has no host")
    if allow_private:
        return parsed
    _check_host(host, _typed_host(url))
    return parsed


def _typed_host(url: str | URL) -> str:
    """The host as it was written, before any normalisation (for the non-ASCII rule)."""
    if isinstance(url, URL):
        return url.host or ""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _check_host(host: str, typed: str) -> None:
    """``host`` is yarl's normalised ASCII host (IPv6 without brackets); ``typed`` is how the URL spelled it."""
    numeric = ":" in host or ends_in_a_number(host)
    if numeric and not typed.isascii():
        raise BlockedAddressError(
            f"host {typed!a} is written with non-ASCII characters that normalise to the address {host}"
        )
    if ":" in host:
        try:
            blocked = address_blocked(host)
        except ValueError:
            raise BlockedAddressError("malformed IPv6 address") from None
        if blocked:
            raise BlockedAddressError(f"address {host} is not allowed (private, loopback or reserved)")
        return
    if numeric:
        try:
            canonical = str(ipaddress.IPv4Address(host)) == host
        except ValueError:
            canonical = False
        if not canonical:
            raise BlockedAddressError(f"host {host} is not a canonical dotted-decimal IPv4 address")
        if address_blocked(host):
            raise BlockedAddressError(f"address {host} is not allowed (private, loopback or reserved)")
        return
    if not _DNS_NAME.fullmatch(host):
        raise BlockedAddressError(f"host {host!a} has characters no DNS name has")
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        raise BlockedAddressError(f"address of {name} is not allowed (loopback)")


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops every blocked address; none left is an error."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not address_blocked(r["host"])]
        if not allowed:
            raise BlockedAddressError(f"address of {host} is not allowed (private, loopback or reserved)")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _guarded_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """aiohttp's socket factory hook: the last check, on the exact address about to be connected to."""
    family, type_, proto, _canonname, sockaddr = addr_info
    if address_blocked(sockaddr[0]):
        raise BlockedAddressError(f"address {sockaddr[0]} is not allowed (private, loopback or reserved)")
    return socket.socket(family=family, type=type_, proto=proto)


def guarded_connector(allow_private: bool, **options: Any) -> aiohttp.TCPConnector:
    """The connector every outbound session uses: resolver and socket factory guarded unless private is allowed."""
    if allow_private:
        return aiohttp.TCPConnector(**options)
    return aiohttp.TCPConnector(resolver=GuardedResolver(), socket_factory=_guarded_socket, **options)
