"""The DCT-domain JPEG module fails cleanly on truncated and bit-flipped JPEGs: it answers with bytes Pillow
decodes or with one of its two exceptions, and never crashes the process (the fuzzing runs in a child process, so
a segfault or abort shows up here as a failure, not as a dead test run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure  # no server of the stack: `make test-fast` runs it

REPO = Path(__file__).resolve().parents[1]


def test_fuzzed_jpegs_fail_cleanly_and_never_crash_the_process():
    child = subprocess.run(
        [sys.executable, "-m", "tests.support.jpeg_fuzz", "--examples", "1500"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert child.returncode == 0, f"fuzzer exited with {child.returncode}\n{child.stdout}\n{child.stderr[-4000:]}"
    outcomes = dict(item.split("=") for item in child.stdout.split())
    # the mutations must reach every outcome, or the fuzzer is not exercising the module
    assert {"ok", "corrupt"} <= set(outcomes), outcomes
