"""deploy/observability's files and the Prometheus tools that check them (promtool, and promcheck, which lists
the metrics a PromQL expression reads with Prometheus's own parser), as tests/test_observability.py and
tests/test_metrics.py use them. scripts/install.sh builds both tools from scripts/prometheus.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from testkit.stack import REPO

OBSERVABILITY = REPO / "deploy" / "observability"
RULES = OBSERVABILITY / "prometheus" / "pixpress-alerts.yml"
RULE_TESTS = OBSERVABILITY / "prometheus" / "pixpress-alerts.test.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "pixpress-dashboard.json"
K8S = REPO / "deploy" / "k8s"
# Grafana's variables, replaced by what Grafana would put there before the query reaches Prometheus
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "3h"}
# series Prometheus itself makes for every target, not exported by any
SYNTHETIC = {"up"}


def tool(name: str) -> Path:
    """A binary scripts/install.sh built into the cache, under the name scripts/versions.sh gives it."""
    cache = Path(os.environ.get("PIXPRESS_CACHE_DIR") or Path.home() / ".cache" / "pixpress")
    variable = {"promtool": "PROMTOOL_BINARY", "promcheck": "PROMCHECK_BINARY"}[name]
    binary = subprocess.run(
        ["bash", "-c", f'REPO="$1"; . "$REPO/scripts/versions.sh"; printf %s "${variable}"', "_", str(REPO)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = cache / "bin" / binary
    assert path.is_file(), f"{path} is missing: scripts/install.sh builds it"
    return path


def run(command: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120, **kwargs)


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return exprs


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    return expr


def promcheck(exprs: list[str]) -> dict[str, Any]:
    request = {"rule_files": [str(RULES)], "exprs": exprs}
    out = run([tool("promcheck")], input=json.dumps(request))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
