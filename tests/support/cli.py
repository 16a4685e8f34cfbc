"""Runs the installed ``pixpress`` command as a user or a script would: a subprocess, stdout and stderr pipes (so
not a terminal), the API's address in ``PIXPRESS_API_URL``. Asynchronous, so that servers the test runs in its
own event loop (image hosts, fake APIs) keep answering while the command runs."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

PIXPRESS = str(Path(sys.executable).with_name("pixpress"))


@dataclass
class Ran:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode()

    @property
    def err(self) -> str:
        return self.stderr.decode()


async def pixpress(*args: str, api: str, env: dict[str, str] | None = None, timeout: float = 180.0) -> Ran:
    environment = {k: v for k, v in os.environ.items() if k not in ("PIXPRESS_API_KEY", "COLUMNS")}
    environment.update({"PIXPRESS_API_URL": api, **(env or {})})
    process = await asyncio.create_subprocess_exec(
        PIXPRESS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, stdout, stderr)
