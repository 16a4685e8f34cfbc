"""Control of the running native stack for fault tests: real signals to real processes, via supervisord."""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
import signal
import subprocess
from pathlib import Path

import aiohttp
import psutil

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("PIXPRESS_STATE_DIR", REPO / ".run"))
CONF = STATE / "supervisord.conf"
MANAGEMENT = "http://127.0.0.1:15672/api"
MANAGEMENT_HEADERS = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}


async def create_vhost(http: aiohttp.ClientSession, name: str) -> None:
    """A RabbitMQ virtual host where guest may do everything (management API)."""
    async with http.put(f"{MANAGEMENT}/vhosts/{name}", headers=MANAGEMENT_HEADERS) as answer:
        answer.raise_for_status()
    permissions = {"configure": ".*", "write": ".*", "read": ".*"}
    async with http.put(
        f"{MANAGEMENT}/permissions/{name}/guest", json=permissions, headers=MANAGEMENT_HEADERS
    ) as answer:
        answer.raise_for_status()


async def delete_vhost(http: aiohttp.ClientSession, name: str) -> None:
    """Delete a virtual host with all its queues; one that is already gone is fine."""
    async with http.delete(f"{MANAGEMENT}/vhosts/{name}", headers=MANAGEMENT_HEADERS) as answer:
        if answer.status != 404:
            answer.raise_for_status()


def amqp_url(vhost: str, user: str = "guest", password: str = "guest") -> str:
    return f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"


def service_env() -> dict[str, str]:
    """The PIXPRESS_* environment the running services got (``scripts/stack.sh up`` writes it to
    ``<state>/service.env``), overlaid with this process's own PIXPRESS_* where the file has none."""
    values = {k: v for k, v in os.environ.items() if k.startswith("PIXPRESS_")}
    env_file = STATE / "service.env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            words = shlex.split(line, comments=True)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                name, _, value = words[1].partition("=")
                values[name] = value
    return values


def service_settings() -> Settings:
    """The image settings the running services were started with (``service_env``), for tests that compare what
    the services made with what the same code makes here."""
    scalars = {
        "read_timeout",
        "download_timeout",
        "connect_timeout",
        "max_image_bytes",
        "max_image_pixels",
        "max_redirects",
        "image_max_attempts",
        "retry_base_delay_ms",
        "jpeg_quality",
        "jpeg_fast_path",
        "cache",
        "retention_days",
    }
    fields = {name.removeprefix("PIXPRESS_").lower(): value for name, value in service_env().items()}
    return Settings(**{name: value for name, value in fields.items() if name in scalars})


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


def supervisor_name(name: str) -> str:
    return f"compressor:{name}" if name.startswith("compressor-") else name


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
