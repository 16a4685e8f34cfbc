"""The native stack's programs through supervisord's own XML-RPC API, and their health probes (scripts/stack.sh
calls it; tests and benchmarks read the layout through testkit/stack.py).

    stackctl.py --state DIR ps                  running programs as "<name> <pid>", servers first, compressors by number
    stackctl.py --state DIR names               every configured program, in the same order
    stackctl.py --state DIR start [--all] NAME...   start those of NAME that are neither running nor starting
    stackctl.py --state DIR wait --since EPOCH --timeout S NAME...   until all of NAME answer their probes
    stackctl.py --state DIR health [NAME...]    one pass of the probes (every configured program by default)

Names and ports come from scripts/stack.env, the ingest API's port from <state>/service.env when it sets one. A
probe is ``tcp://host:port`` (accepts a connection) or ``http://[user:pass@]host:port/path`` (answers 200).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import shlex
import socket
import sys
import time
import xmlrpc.client
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LAYOUT_FILE = Path(__file__).resolve().parent / "stack.env"
PROBE_TIMEOUT = 2.0


def read_assignments(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as a shell reads them (quotes, comments, an optional ``export``)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            words = words[1:]
        if len(words) == 1 and "=" in words[0]:
            name, _, value = words[0].partition("=")
            values[name] = value
    return values


def layout() -> dict[str, str]:
    """scripts/stack.env: program names and ports."""
    return read_assignments(LAYOUT_FILE.read_text())


def health_port(name: str, env: dict[str, str]) -> int:
    if name.startswith("compressor-"):
        return int(env["COMPRESSOR_HEALTH_PORT_BASE"]) + int(name.removeprefix("compressor-"))
    return int(env[f"{name.upper()}_HEALTH_PORT"])


def probes(name: str, env: dict[str, str], state: Path) -> list[str]:
    """The probes a program must pass to count as healthy."""
    if name == "rabbitmq":
        user, password = env["RABBITMQ_USER"], env["RABBITMQ_PASSWORD"]
        return [
            f"tcp://127.0.0.1:{env['RABBITMQ_PORT']}",
            f"http://{user}:{password}@127.0.0.1:{env['RABBITMQ_MANAGEMENT_PORT']}/api/overview",
            f"http://127.0.0.1:{env['RABBITMQ_PROMETHEUS_PORT']}/metrics",
        ]
    if name == "ferretdb":
        return [f"tcp://127.0.0.1:{env['FERRETDB_PORT']}"]
    if name == "minio":
        return [f"http://127.0.0.1:{env['MINIO_PORT']}/minio/health/live"]
    if name == "ingest":
        return [f"http://127.0.0.1:{api_port(env, state)}/healthz"]
    return [f"http://127.0.0.1:{health_port(name, env)}/healthz"]


def api_port(env: dict[str, str], state: Path) -> str:
    service_env = state / "service.env"
    given = read_assignments(service_env.read_text()) if service_env.is_file() else {}
    return given.get("PIXPRESS_API_PORT") or env["API_PORT"]


def probe(url: str) -> str | None:
    """None when the probe passes, else a short reason."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        if parts.scheme == "tcp":
            with socket.create_connection((host, port or 0), timeout=PROBE_TIMEOUT):
                return None
        connection = http.client.HTTPConnection(host, port or 80, timeout=PROBE_TIMEOUT)
        headers = {}
        if parts.username is not None:
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            connection.request("GET", parts.path or "/", headers=headers)
            status = connection.getresponse().status
        finally:
            connection.close()
        return None if status == 200 else f"GET {parts.path} -> {status}"
    except OSError as exc:
        return f"{parts.scheme}://{host}:{port}: {exc.strerror or exc}"
    except http.client.HTTPException as exc:
        return f"{parts.scheme}://{host}:{port}: {type(exc).__name__}"


def failing(names: Iterable[str], env: dict[str, str], state: Path) -> dict[str, str]:
    """One pass over every probe of ``names`` in parallel: the unhealthy names with their first reason."""
    checks = [(name, url) for name in names for url in probes(name, env, state)]
    if not checks:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(checks))) as pool:
        reasons = list(pool.map(lambda check: probe(check[1]), checks))
    found: dict[str, str] = {}
    for (name, _), reason in zip(checks, reasons, strict=True):
        if reason is not None:
            found.setdefault(name, reason)
    return found


class Supervisor:
    """supervisord's XML-RPC interface on the stack's unix socket (what supervisorctl itself talks to)."""

    def __init__(self, state: Path) -> None:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{state / 'supervisord.sock'}")
        self._rpc: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def states(self) -> dict[str, tuple[str, str, int]]:
        """program name -> (supervisor's full name ``group:name``, state name, pid)."""
        infos: list[dict[str, Any]] = self._rpc.getAllProcessInfo()
        return {info["name"]: (f"{info['group']}:{info['name']}", info["statename"], info["pid"]) for info in infos}

    def start(self, names: list[str], everything: bool) -> list[str]:
        states = self.states()
        missing = [name for name in names if states.get(name, ("", "", 0))[1] not in ("RUNNING", "STARTING")]
        if missing and everything:  # supervisord starts them in parallel
            self._rpc.startAllProcesses(False)
        elif missing:
            for name in missing:
                try:
                    self._rpc.startProcess(states[name][0] if name in states else name, False)
                except xmlrpc.client.Fault as fault:  # already started meanwhile, or cannot be: `wait` reports it
                    if "ALREADY_STARTED" not in fault.faultString:
                        print(f"{name}: {fault.faultString}", file=sys.stderr)
        return missing


def ordered(names: Iterable[str], env: dict[str, str]) -> list[str]:
    """Servers, then the services, then the compressors by number."""
    fixed = env["SERVERS"].split() + env["SERVICES"].split()

    def rank(name: str) -> tuple[int, int]:
        if name in fixed:
            return fixed.index(name), 0
        if name.startswith("compressor-") and name.removeprefix("compressor-").isdigit():
            return len(fixed), int(name.removeprefix("compressor-"))
        return len(fixed) + 1, 0

    return sorted(names, key=rank)


def log_tail(state: Path, name: str, lines: int) -> str:
    path = state / "logs" / f"{name}.log"
    if not path.is_file() or path.stat().st_size == 0:
        return f"   (no output in {path})"
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {path} ---\n" + "\n".join(line[:400] for line in tail)


def wait(
    supervisor: Supervisor,
    names: list[str],
    env: dict[str, str],
    state: Path,
    since: float,
    timeout: float,
    prefix: str,
) -> int:
    """Until every program of ``names`` is healthy (0), or the deadline passes or supervisord gives one up (1)."""
    previous: list[str] = []
    for tick in range(1, 1_000_000):
        bad = failing(names, env, state)
        if not bad:
            return 0
        if list(bad) != previous:
            print(f"{prefix}: waiting for: {' '.join(bad)} ({time.time() - since:.0f}s)", flush=True)
            previous = list(bad)
        if time.time() >= since + timeout:
            print(f"{prefix}: ERROR: not healthy after {timeout:.0f}s:", file=sys.stderr)
            for name, reason in bad.items():
                print(f"   {name}: {reason}", file=sys.stderr)
            for name in bad:
                print(log_tail(state, name, 25), file=sys.stderr)
            print(
                f"{prefix}: the stack is left running for inspection: scripts/stack.sh status | logs NAME, make down",
                file=sys.stderr,
            )
            return 1
        if tick % 3 == 0:  # a program supervisord gave up on will not get healthy by waiting
            states = supervisor.states()
            for name in bad:
                if states.get(name, ("", "", 0))[1] == "FATAL":
                    print(f"{prefix}: ERROR: {name} keeps exiting (supervisord gave up: FATAL)", file=sys.stderr)
                    print(log_tail(state, name, 40), file=sys.stderr)
                    return 1
        time.sleep(1)
    return 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="the stack's state directory")
    parser.add_argument("--prefix", default="stack", help="what messages start with")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ps")
    commands.add_parser("names")
    start = commands.add_parser("start")
    start.add_argument("--all", action="store_true", help="let supervisord start every stopped program at once")
    start.add_argument("names", nargs="+")
    waiting = commands.add_parser("wait")
    waiting.add_argument("--since", type=float, required=True, help="epoch seconds the deadline counts from")
    waiting.add_argument("--timeout", type=float, required=True)
    waiting.add_argument("names", nargs="+")
    health = commands.add_parser("health")
    health.add_argument("names", nargs="*")
    args = parser.parse_args(argv)

    env = layout()
    supervisor = Supervisor(args.state)
    if args.command == "ps":
        states = supervisor.states()
        for name in ordered((n for n, (_, state, _) in states.items() if state == "RUNNING"), env):
            print(name, states[name][2])
    elif args.command == "names":
        print("\n".join(ordered(supervisor.states(), env)))
    elif args.command == "start":
        missing = supervisor.start(args.names, args.all)
        if missing:
            print(f"{args.prefix}: starting {' '.join(missing)}", flush=True)
    elif args.command == "wait":
        return wait(supervisor, args.names, env, args.state, args.since, args.timeout, args.prefix)
    elif args.command == "health":
        names = args.names or ordered(supervisor.states(), env)
        bad = failing(names, env, args.state)
        print(f"health: all {len(names)} programs healthy" if not bad else "health: NOT healthy:")
        for name, reason in bad.items():
            print(f"   {name}: {reason}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
