"""SSRF protection for every outbound URL (images and webhooks).

The check runs on the *resolved* address inside aiohttp's resolver, so the connection is made to exactly the
address that was checked (no DNS-rebinding gap), and again on each redirect hop because redirects are followed
by hand. IP-literal hosts skip aiohttp's resolver, so :func:`check_literal_host` covers them before each hop.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

_EXTRA_BLOCKED = (
    ipaddress.ip_network("100.64.0.0/10"),  # CGNAT
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
)


class BlockedAddressError(OSError):
    """The URL points at an address pixpress refuses to contact."""


def address_blocked(address: str) -> bool:
    """True for loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved and unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or not ip.is_global:
        return True
    return any(ip in network for network in _EXTRA_BLOCKED if network.version == ip.version)


def check_literal_host(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host is an IP literal in a blocked range (hostnames are checked when resolved)."""
    if allow_private:
        return
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            raise BlockedAddressError(f"address of {host!r} is not allowed (loopback)") from None
        return
    if address_blocked(host):
        raise BlockedAddressError(f"address {host} is not allowed (private, loopback or reserved)")


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops every blocked address; none left is an error."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not address_blocked(r["host"])]
        if not allowed:
            raise BlockedAddressError(f"address of {host!r} is not allowed (private, loopback or reserved)")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def make_resolver(allow_private: bool) -> AbstractResolver:
    return DefaultResolver() if allow_private else GuardedResolver()
