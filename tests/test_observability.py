"""deploy/observability: the alert rules, the Grafana dashboard and the scrape configurations.

* the alert rules pass ``promtool check rules`` and their unit tests (``promtool test rules``: each alert fires on
  the series that should fire it and stays quiet on a near miss);
* the scrape configurations pass ``promtool check config``; the pod annotations, the PodMonitor and the compose
  targets point at ports the services really serve ``/metrics`` on;
* every pixpress metric appears on the dashboard, and promcheck (Prometheus's own PromQL parser, which
  tests/test_metrics.py uses to check that every query names only metrics the running stack exports) reports
  what it should.

promtool and promcheck are built by scripts/install.sh (``make up`` / ``make test`` run it) from scripts/prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import metrics
from testkit.stack import REPO
from tests.support.metrics import families_of
from tests.support.promql import (
    DASHBOARD,
    K8S,
    OBSERVABILITY,
    RULE_TESTS,
    RULES,
    dashboard_exprs,
    promcheck,
    run,
    tool,
)

pytestmark = pytest.mark.pure  # no server of the stack (promtool and promcheck are local binaries): `make test-fast`

# --- alert rules ---------------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_rules():
    out = run([tool("promtool"), "check", "rules", RULES])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout


def test_alert_rules_fire_as_their_unit_tests_say():
    out = run([tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_catches_a_broken_rule(tmp_path: Path):
    """The check above can fail: the same file with one expression broken does not pass."""
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("> 3600", "> > 3600"))
    out = run([tool("promtool"), "check", "rules", broken])
    assert out.returncode != 0 and "PixpressRequestOpenTooLong" in out.stdout + out.stderr


def test_every_alert_the_issue_asks_for_is_there_with_a_unit_test():
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts >= {
        "PixpressBacklogGrowing",
        "PixpressDeadLetters",
        "PixpressWebhookDeadLettered",
        "PixpressNoCompressorConsuming",
        "PixpressRequestOpenTooLong",
    }
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == alerts


# --- PromQL of the dashboard and the rules -------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_with_a_datasource_variable():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    titles = " | ".join(panel["title"] for panel in board["panels"]).lower()
    for asked in ("images processed", "failures by reason", "bytes saved", "stage latency p50", "stage latency p95",
                  "queue depth", "backlog age", "webhook", "memory"):
        assert asked in titles, asked


def test_promcheck_reports_what_it_should():
    """The metric lister and the parser behind the test above, on expressions whose answer is known."""
    checked = promcheck(["sum by (le) (rate(a_bucket{x=\"b\"}[5m])) / on (job) group_left b_total", "sum(("])
    first, second = checked["exprs"]
    assert first["metrics"] == ["a_bucket", "b_total"] and "error" not in first
    assert "error" in second


def test_every_pixpress_metric_is_on_the_dashboard():
    used = {name for expr in dashboard_exprs() for name in re.findall(r"\bpixpress_[a-z_]+", expr)}
    families = set().union(*(families_of(service) for service in metrics.SERVICE_METRICS))
    shown = {family for family in families if any(name.startswith(family) for name in used)}
    assert shown == families, f"not on the dashboard: {sorted(families - shown)}"


# --- scrape configurations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["prometheus-compose.yml", "prometheus-k8s.yml"])
def test_scrape_configs_pass_promtool_check_config(config: str):
    out = run([tool("promtool"), "check", "config", "--syntax-only", OBSERVABILITY / "prometheus" / config])
    assert out.returncode == 0, out.stdout + out.stderr


def _deployments() -> dict[str, dict[str, Any]]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}


def test_every_k8s_deployment_is_annotated_for_scraping_on_a_port_it_serves():
    deployments = _deployments()
    assert set(deployments) == {"ingest", "compressor", "aggregator", "notifier"}
    podmonitor = yaml.safe_load((OBSERVABILITY / "prometheus" / "podmonitor.yaml").read_text())
    monitored_ports = {endpoint["port"] for endpoint in podmonitor["spec"]["podMetricsEndpoints"]}
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = {port["name"]: port["containerPort"] for c in template["spec"]["containers"] for port in c["ports"]}
        assert int(annotations["prometheus.io/port"]) in ports.values(), name
        assert monitored_ports & set(ports), f"the PodMonitor scrapes no port of {name}"
        labels = template["metadata"]["labels"]
        assert labels.items() >= podmonitor["spec"]["selector"]["matchLabels"].items(), name


def test_compose_scrape_config_reaches_every_service_where_it_serves_metrics():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    config = yaml.safe_load((OBSERVABILITY / "prometheus" / "prometheus-compose.yml").read_text())
    targets: dict[str, tuple[str, int]] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets[job["job_name"]] = (sd["names"][0], sd["port"])
        for static in job.get("static_configs", []):
            host, port = static["targets"][0].split(":")
            targets[job["job_name"]] = (host, int(port))
    for service in ("ingest", "compressor", "aggregator", "notifier"):
        host, port = targets[f"pixpress-{service}"]
        env = compose["services"][host]["environment"]
        expected = int(env["PIXPRESS_API_PORT"]) if service == "ingest" else int(env["PIXPRESS_HEALTH_PORT"])
        assert port == expected, service
    assert targets["rabbitmq"] == ("rabbitmq", 15692)
    for job in config["scrape_configs"]:
        if job["job_name"] == "rabbitmq":
            assert job["metrics_path"] == "/metrics/per-object"
