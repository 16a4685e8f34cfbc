"""One pass over the native stack's health probes (stdlib only, used by scripts/stack.sh).

Usage: ``python scripts/healthcheck.py NAME=PROBE ...`` where PROBE is ``tcp://host:port`` (accepts a connection) or
``http://[user:pass@]host:port/path`` (answers 200). A name may have several probes; it is healthy when all pass.
Prints one line ``NAME<TAB>reason`` per unhealthy name and exits 1 if there is any, else prints nothing and exits 0.
"""

from __future__ import annotations

import base64
import http.client
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

TIMEOUT = 2.0


def probe(url: str) -> str | None:
    """None when the probe passes, else a short reason."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        if parts.scheme == "tcp":
            with socket.create_connection((host, port or 0), timeout=TIMEOUT):
                return None
        if parts.scheme != "http":
            return f"unsupported probe {url}"
        conn = http.client.HTTPConnection(host, port or 80, timeout=TIMEOUT)
        headers = {}
        if parts.username is not None:
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            conn.request("GET", parts.path or "/", headers=headers)
            status = conn.getresponse().status
        finally:
            conn.close()
        return None if status == 200 else f"GET {parts.path} -> {status}"
    except OSError as exc:
        return f"{parts.scheme}://{host}:{port}: {exc.strerror or exc}"
    except http.client.HTTPException as exc:
        return f"{parts.scheme}://{host}:{port}: {type(exc).__name__}"


def main(argv: list[str]) -> int:
    checks = [arg.split("=", 1) for arg in argv if "=" in arg]
    if not checks:
        print("usage: healthcheck.py NAME=PROBE ...", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(max_workers=min(16, len(checks))) as pool:
        results = list(pool.map(lambda check: probe(check[1]), checks))
    failing: dict[str, str] = {}
    for (name, _), reason in zip(checks, results, strict=True):
        if reason is not None and name not in failing:
            failing[name] = reason
    for name, reason in failing.items():
        print(f"{name}\t{reason}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
