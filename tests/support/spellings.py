"""Ways to write 127.0.0.1 in a URL that the SSRF guard must refuse (issue 11): the two that got through
(fullwidth digits, ideographic full stops) and the classic ones inet_aton, IDNA and IPv6 accept."""

from __future__ import annotations

FULLWIDTH = "１２７.０.０.１"
IDEOGRAPHIC = "127。0。0。1"
LOOPBACK_SPELLINGS = {
    "fullwidth-digits": FULLWIDTH,
    "ideographic-full-stops": IDEOGRAPHIC,
    "fullwidth-full-stops": "127．0．0．1",
    "short-form": "127.1",
    "octal": "0177.0.0.1",
    "hex": "0x7f.1",
    "integer": "2130706433",
    "trailing-dot": "127.0.0.1.",
    "mapped-ipv6": "[::ffff:127.0.0.1]",
    "localhost": "localhost",
    "circled-localhost": "ⓛⓞⓒⓐⓛⓗⓞⓢⓣ",
}


def spelled(url: str, host: str) -> str:
    """``url`` (on 127.0.0.1) with its host written as ``host``."""
    return url.replace("127.0.0.1", host, 1)
