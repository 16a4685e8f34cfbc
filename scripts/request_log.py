"""Every log line of one request, from every service of the native stack, in time order (stdlib only).

Usage: ``scripts/stack.sh logs --request ID [--follow]`` (which runs
``python -m scripts.request_log --logs <state>/logs ID [--follow]`` from the repository).

The services log one JSON object per line carrying ``service`` and, on every line about a request,
``request_id`` (plus ``row`` and ``index`` on the lines about one image). Lines from ingest, every compressor,
the aggregator and the notifier (rotated files included) are merged by their ``timestamp`` and printed as
``time service [row/index] event key=value ...``; ``--json`` prints the original lines instead. ``--follow``
then keeps printing the request's new lines as they are written, until interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from scripts import stackctl

# the services' programs as scripts/stack.env names them; the compressors are compressor-1 ... compressor-N
SERVICES = frozenset(stackctl.layout()["SERVICES"].split())
_SHOWN_FIRST = ("timestamp", "service", "request_id", "row", "index", "event", "level")


def log_files(logs: Path) -> list[Path]:
    """The services' logs with their rotations (supervisord rotates ``x.log`` to ``x.log.1``, ``x.log.2``)."""
    return [
        path
        for path in sorted(logs.glob("*.log*"))
        if (name := program(path)) in SERVICES or name.startswith("compressor-")
    ]


def _rotation(path: Path) -> int:
    suffix = path.name.rsplit(".log", 1)[1].lstrip(".")
    return int(suffix) if suffix.isdigit() else 0


def matching(line: str, request_id: str) -> dict[str, Any] | None:
    if request_id not in line:  # cheap test first: most lines are about other requests
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and entry.get("request_id") == request_id else None


def program(path: Path) -> str:
    """The program a log file belongs to (``compressor-2`` for ``compressor-2.log.1``)."""
    return path.name.split(".log", 1)[0]


def render(entry: dict[str, Any], raw: str, as_json: bool, source: str) -> str:
    """``source``, the program that wrote the line, tells the compressors apart (all log service=compressor)."""
    if as_json:
        return raw.rstrip("\n")
    image = f" {entry['row']}/{entry['index']}" if "row" in entry and "index" in entry else ""
    rest = " ".join(f"{key}={entry[key]}" for key in entry if key not in _SHOWN_FIRST)
    return f"{entry.get('timestamp', '?')} {source:<12}{image} {entry.get('event', '?')} {rest}".rstrip()


def read_all(files: list[Path], request_id: str) -> list[tuple[str, dict[str, Any], str, str]]:
    found = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as stream:
            for line in stream:
                entry = matching(line, request_id)
                if entry is not None:
                    found.append((str(entry.get("timestamp", "")), entry, line, program(path)))
    found.sort(key=lambda item: item[0])  # ISO UTC timestamps sort as text
    return found


def follow(logs: Path, request_id: str, as_json: bool, out: TextIO) -> None:
    """Print new matching lines as the services write them (files that appear later, e.g. a new compressor,
    are picked up; a file rotated under us is read again from its start)."""
    positions = {path: path.stat().st_size for path in log_files(logs) if not _rotation(path)}
    while True:
        for path in [p for p in log_files(logs) if not _rotation(p)]:
            start = positions.get(path, 0)
            if path.stat().st_size < start:
                start = 0
            with path.open("rb") as stream:
                stream.seek(start)
                for raw in stream:
                    if not raw.endswith(b"\n"):
                        break  # half-written: read it whole next time
                    start += len(raw)
                    line = raw.decode("utf-8", errors="replace")
                    entry = matching(line, request_id)
                    if entry is not None:
                        print(render(entry, line, as_json, program(path)), file=out, flush=True)
            positions[path] = start
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("request_id")
    parser.add_argument("--logs", type=Path, required=True, help="the stack's log directory (<state>/logs)")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    parser.add_argument("--json", action="store_true", help="print the original JSON lines")
    args = parser.parse_args(argv)
    found = read_all(log_files(args.logs), args.request_id)
    for _, entry, line, source in found:
        print(render(entry, line, args.json, source))
    if args.follow:
        try:
            follow(args.logs, args.request_id, args.json, sys.stdout)
        except KeyboardInterrupt:
            return 0
    elif not found:
        print(f"no log line carries request_id {args.request_id} in {args.logs}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
