"""The SSRF guard's decision, checked against what aiohttp and the system resolver would really connect to.

The property test generates URL strings in the spellings attackers use (fullwidth and other Unicode digits,
ideographic and fullwidth full stops, IDNA names, IPv4 in octal, hex, short and integer forms, IPv6 with
embedded IPv4 and zones, user info, ports) and asserts: whenever the guard allows a URL, the host aiohttp
takes from that same string is not a loopback/private/reserved address, neither as an IP literal nor as a
name the system resolver reads as a numeric address. The oracle uses aiohttp's own URL building and the
socket layer, not the guard's code.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.helpers import is_canonical_ipv4_address, is_ip_address
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from services.ingest.csv_parser import url_problem
from shared.url_guard import BlockedAddressError, address_blocked, check_url

pytestmark = pytest.mark.pure  # no server of the stack: `make test-fast` runs it

# --- the oracle: where would aiohttp connect for this string? ----------------------------------------------


def _dangerous(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _dangerous(ip.ipv4_mapped)
        if ip.sixtofour is not None and _dangerous(ip.sixtofour):
            return True
        if int(ip) >> 32 == 0 and int(ip) > 0xFFFF:  # IPv4-compatible ::a.b.c.d
            return _dangerous(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
        or (ip.version == 4 and ip in ipaddress.ip_network("100.64.0.0/10"))
    )


def connect_target(url: str) -> str | None:
    """The address aiohttp would connect to without DNS, or None when it would ask DNS (or refuse the host)."""
    try:
        host = URL(url).raw_host  # ClientSession._build_url does URL(str_or_url)
    except (ValueError, UnicodeError):
        return None  # aiohttp cannot build a request from it
    if not host:
        return None
    if host.endswith(".."):
        host = host.rstrip(".") + "."
    if is_ip_address(host):
        if ":" not in host and not is_canonical_ipv4_address(host):
            return None  # aiohttp refuses it itself
        return host.split("%", 1)[0]
    try:  # a name the resolver turns into an address without asking DNS (inet_aton forms, /etc/hosts aside)
        info = socket.getaddrinfo(host, 80, flags=socket.AI_NUMERICHOST, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return str(info[0][4][0])


# --- the strategies --------------------------------------------------------------------------------------

DIGIT_FORMS = {
    "ascii": "0123456789",
    "fullwidth": "０１２３４５６７８９",
    "arabic-indic": "٠١٢٣٤٥٦٧٨٩",
    "devanagari": "०१२३४५६७८९",
    "mathematical": "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗",
}
DOTS = [".", "。", "．", "｡", "﹒", "%2e"]
INTERESTING_V4 = [
    "127.0.0.1",
    "127.0.0.2",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.0.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "8.8.8.8",
    "1.1.1.1",
]

ipv4 = st.one_of(st.sampled_from(INTERESTING_V4).map(ipaddress.IPv4Address), st.ip_addresses(v=4))


@st.composite
def ipv4_spelling(draw: st.DrawFn) -> str:
    """One IPv4 address in one of the spellings inet_aton, browsers or IDNA accept."""
    value = int(draw(ipv4))
    octets = [(value >> shift) & 0xFF for shift in (24, 16, 8, 0)]
    form = draw(st.sampled_from(["dotted", "short", "integer", "octal", "hex", "mixed", "padded"]))
    if form == "dotted":
        parts = [str(o) for o in octets]
    elif form == "short":  # a.b.c with c 16 bits, or a.b with b 24 bits
        parts = (
            [str(octets[0]), str(octets[1]), str(value & 0xFFFF)]
            if draw(st.booleans())
            else [str(octets[0]), str(value & 0xFFFFFF)]
        )
    elif form == "integer":
        parts = [str(value)]
    elif form == "octal":
        parts = ["0" + format(o, "o") for o in octets]
    elif form == "hex":
        parts = [draw(st.sampled_from(["0x", "0X"])) + format(o, "x") for o in octets]
    elif form == "padded":
        parts = [f"{o:03d}" for o in octets]
    else:
        parts = [draw(st.sampled_from([str(o), "0" + format(o, "o"), hex(o)])) for o in octets]
    digits = DIGIT_FORMS[draw(st.sampled_from(list(DIGIT_FORMS)))]
    text = draw(st.sampled_from(DOTS)).join(parts).translate(str.maketrans("0123456789", digits))
    return text + draw(st.sampled_from(["", "", "", ".", ".."]))


@st.composite
def ipv6_spelling(draw: st.DrawFn) -> str:
    v4 = draw(ipv4)
    address = draw(
        st.one_of(
            st.ip_addresses(v=6).map(str),
            st.just(f"::ffff:{v4}"),
            st.just(f"::{v4}"),
            st.just(f"64:ff9b::{v4}"),
            st.just(f"2002:{int(v4) >> 16:04x}:{int(v4) & 0xFFFF:04x}::1"),
            st.sampled_from(["::1", "0:0:0:0:0:0:0:1", "::", "fe80::1%25eth0", "fd00::1", "2606:4700:4700::1111"]),
        )
    )
    if draw(st.booleans()):
        address = address.upper()
    return f"[{address}]"


NAME_ALPHABET = st.sampled_from(list("abcxyzLOCAHST0123456789-._") + list("ⓛⓞⓒⓐⓗⓢⓣｌｏｃａｈｓｔ。．üßİ١٢٧０１"))
names = st.one_of(
    st.text(NAME_ALPHABET, min_size=1, max_size=24),
    st.sampled_from(
        ["localhost", "LOCALHOST", "localhost.", "ｌｏｃａｌｈｏｓｔ", "ⓛⓞⓒⓐⓛⓗⓞⓢⓣ", "a.localhost", "example.com"]
    ),
    st.sampled_from(["bücher.de", "xn--bcher-kva.de", "127.0.0.1.nip.io", "0x7f.example", "1e3"]),
)
userinfo = st.one_of(
    st.just(""), st.sampled_from(["user@", "user:pass@", "127.0.0.1@", "a:b@８.８.８.８@", "evil.com@"])
)
ports = st.one_of(st.just(""), st.integers(min_value=0, max_value=70000).map(lambda p: f":{p}"))
paths = st.sampled_from(["", "/", "/a.jpg", "/a?b=c#d", "/%2e%2e/x"])


@st.composite
def urls(draw: st.DrawFn) -> str:
    host = draw(st.one_of(ipv4_spelling(), ipv6_spelling(), names))
    scheme = draw(st.sampled_from(["http", "https", "HTTP"]))
    return f"{scheme}://{draw(userinfo)}{host}{draw(ports)}{draw(paths)}"


# --- the property ----------------------------------------------------------------------------------------


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=urls())
def test_an_allowed_url_never_connects_to_a_blocked_address(url: str):
    try:
        checked = check_url(url, allow_private=False)
    except BlockedAddressError:
        event("refused")
        return
    event("allowed")
    assert checked == URL(url)  # the object handed to aiohttp is what aiohttp would have built itself
    target = connect_target(url)
    if target is not None:
        assert not _dangerous(ipaddress.ip_address(target)), f"{url!r} allowed but connects to {target}"
    host = (URL(url).raw_host or "").rstrip(".")
    assert host != "localhost" and not host.endswith(".localhost"), url


@settings(max_examples=1000, deadline=None)
@given(url=urls())
def test_bulk_validation_agrees_with_the_guard(url: str):
    """The upload's fast path for plain host names may skip the full parse, never change the verdict."""
    try:
        check_url(url, allow_private=False)
        guard_refuses = False
    except BlockedAddressError:
        guard_refuses = True
    problem = url_problem(url, 2048, allow_private=False)
    if guard_refuses:
        assert problem is not None, url
    elif problem is not None:  # refused for another reason: syntax the CSV rules do not take
        assert "not allowed" not in problem and "normalise" not in problem, (url, problem)


# --- the exact spellings and friends -------------------------------------------------------------

REFUSED = [
    "http://１２７.０.０.１:8999/a",  # fullwidth digits (issue 11)
    "http://127。0。0。1:8999/a",  # ideographic full stops (issue 11)
    "http://127．0．0．1/a",
    "http://127﹒0﹒0﹒1/a",
    "http://８.８.８.８/a",  # non-ASCII spelling of a public address: refused too
    "http://127.1/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://017700000001/",
    "http://127.0.0.1./",
    "http://127.0.0.1/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[fe80::1%25eth0]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
    "http://ｌｏｃａｌｈｏｓｔ/",
    "http://x.localhost/",
    "http://%31%32%37.0.0.1/",
    "http://user:pw@127.0.0.1@/",
    "ftp://example.com/a",
    "http:///nohost",
]
ALLOWED = [
    "http://8.8.8.8/a.jpg",
    "https://example.com/a.jpg",
    "https://user:pw@example.com:8443/a.jpg",
    "http://bücher.de/a.jpg",
    "http://[2606:4700:4700::1111]/a.jpg",
    "http://[::ffff:8.8.8.8]/a.jpg",
    "http://images.example.com./a.jpg",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused_spellings(url: str):
    with pytest.raises(BlockedAddressError):
        check_url(url, allow_private=False)


@pytest.mark.parametrize("url", ALLOWED)
def test_public_hosts_stay_allowed(url: str):
    """The guard is not the trivial one that refuses everything."""
    assert check_url(url, allow_private=False) == URL(url)


def test_allow_private_opens_the_guard_but_still_needs_an_http_url():
    assert check_url("http://127.0.0.1:8999/a", allow_private=True).raw_host == "127.0.0.1"
    with pytest.raises(BlockedAddressError):
        check_url("file:///etc/passwd", allow_private=True)


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("224.0.0.1", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("::ffff:127.0.0.1", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_which_address_ranges_are_blocked(address: str, blocked: bool):
    assert address_blocked(address) is blocked
