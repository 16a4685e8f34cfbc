"""The SSRF guard on a later redirect hop, with the guard on as in production (issue 11).

Every address a test reaches is loopback, which the guard refuses on the first hop, so it never gets to judge a
redirect. Here a network namespace of the test's own gives a globally routable address to its loopback interface;
an image host there redirects to every spelling of 127.0.0.1 and ``localhost``, and the compressor's downloader
must refuse each at once, permanently, without a request reaching the loopback host, while a redirect to the
public host itself is followed. Needs ``ip`` and root (or passwordless sudo); CI has both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redirect_probe import PUBLIC
from tests.support.spellings import LOOPBACK_SPELLINGS

ROOT = Path(__file__).resolve().parent.parent
SPELLINGS = {"plain": "127.0.0.1", **LOOPBACK_SPELLINGS}
# the guard's own words (shared/url_guard.py), so a refusal for another reason (a timeout, a 404) cannot pass
REFUSALS = ("is not allowed (", "non-ASCII characters", "not a canonical dotted-decimal")


def as_root() -> list[str]:
    """Nothing as root, ``sudo -n`` for a developer with sudo (the README allows either)."""
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def ip(*args: str) -> None:
    subprocess.run([*as_root(), "ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def public_namespace() -> Iterator[str]:
    if shutil.which("ip") is None:
        pytest.fail("this test creates a network namespace: it needs iproute2 (`apt-get install iproute2`)")
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode:
        pytest.fail("this test creates a network namespace: run the suite as root or with passwordless sudo")
    name = f"pixpress-redirect-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{PUBLIC}/32", "dev", "lo")
        yield name
    finally:
        ip("netns", "delete", name)


@pytest.fixture(scope="module")
def outcomes(public_namespace: str) -> dict[str, dict]:
    ran = subprocess.run(
        [
            *as_root(),
            "ip",
            "netns",
            "exec",
            public_namespace,
            sys.executable,
            "-m",
            "tests.support.redirect_probe",
            json.dumps(SPELLINGS),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout.splitlines()[-1])


def test_a_redirect_to_the_public_host_itself_is_followed(outcomes: dict[str, dict]):
    """The control: the guard lets the first hop and a public second hop through, so the refusals below are the
    later hop's, not the first one's."""
    assert outcomes["public"] == {"bytes": outcomes["_image_bytes"], "loopback_hits": 0}


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_a_redirect_from_a_public_host_to_loopback_is_refused_and_never_fetched(outcomes: dict[str, dict], name: str):
    outcome = outcomes[name]
    assert "bytes" not in outcome, f"{SPELLINGS[name]!r} was fetched through a redirect"
    assert outcome["loopback_hits"] == 0
    assert outcome["transient"] is False, outcome["error"]  # refused for good: no retry, no redelivery
    assert any(why in outcome["error"] for why in REFUSALS), outcome["error"]
