"""Control of the running native stack for fault tests: real signals to real processes, via supervisord.

Where the stack is and how to reach it (ports, the services' settings, the management API) is testkit.stack.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import psutil

from testkit.stack import REPO, STATE

CONF = STATE / "supervisord.conf"


def processes() -> dict[str, int]:
    """``scripts/stack.sh ps``: ``<name> <pid>`` of every running program."""
    out = subprocess.run([str(REPO / "scripts" / "stack.sh"), "ps"], check=True, capture_output=True, text=True)
    return {name: int(pid) for name, pid in (line.split() for line in out.stdout.splitlines() if line.strip())}


def pid_of_client(port: int) -> int | None:
    """The local process whose TCP connection to us comes from ``port`` (a client of a test server)."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr and connection.laddr.port == port and connection.pid and connection.pid != os.getpid():
            return connection.pid
    return None


def compressor_names() -> list[str]:
    """Every configured compressor program, whatever its state (``processes()`` lists RUNNING ones only)."""
    names = []
    for line in supervisorctl("status").splitlines():
        program = line.split()[0] if line.strip() else ""
        if program.startswith("compressor:"):
            names.append(program.split(":", 1)[1])
    return names


async def wait_compressors_running(timeout: float = 60.0) -> None:
    """Until every configured compressor is RUNNING (after kills, or a stop and start)."""
    names = compressor_names()
    for name in names:
        await wait_running(name, timeout=timeout)


def supervisorctl(*args: str) -> str:
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "supervisorctl"), "-c", str(CONF), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout + out.stderr


def kill_9(name: str) -> int:
    """SIGKILL the program; supervisord restarts it (autorestart), as an orchestrator would."""
    pid = processes()[name]
    os.kill(pid, signal.SIGKILL)
    return pid


async def wait_running(name: str, old_pid: int | None = None, timeout: float = 60.0) -> int:
    """Wait until ``name`` runs again (with a new pid when ``old_pid`` is given)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        pid = processes().get(name)
        if pid is not None and pid != old_pid:
            return pid
        await asyncio.sleep(0.5)
    raise AssertionError(f"{name} did not come back within {timeout}s: {supervisorctl('status')}")
