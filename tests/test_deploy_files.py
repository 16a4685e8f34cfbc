"""Static checks of the deployment files: Dockerfile, docker-compose.yml and deploy/k8s/*.yaml.

No servers and no Docker engine needed. These catch what review misses: a typo in a ``PIXPRESS_*`` name
(silently ignored at run time), an unpinned image, a compressor that cannot be scaled, a probe on the wrong
port, a secret in a ConfigMap, an autoscaler watching the wrong queue.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.messages import Queue
from shared.settings import Settings

pytestmark = pytest.mark.pure  # no server of the stack: `make test-fast` runs it

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S_DIR = ROOT / "deploy" / "k8s"
PIXPRESS_SERVICES = ("ingest", "compressor", "aggregator", "notifier")
INFRA_SERVICES = ("rabbitmq", "mongo", "minio")

PREFIX = Settings.model_config["env_prefix"]
SETTING_ENV_NAMES = {PREFIX + name.upper() for name in Settings.model_fields}
SECRET_ENV_NAMES = {
    PREFIX + name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in repr(field.annotation)
}
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


def _interpolate(value: str) -> str:
    """Resolve compose ``${VAR:-default}`` with its default, as on a machine where nothing is set."""

    def repl(match: re.Match[str]) -> str:
        if match["op"] not in (":-", "-"):
            raise AssertionError(f"{value!r}: ${{{match['name']}}} has no default, compose would need it set")
        return match["default"]

    return _INTERPOLATION.sub(repl, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict[str, Any]]:
    files = sorted(K8S_DIR.glob("*.yaml"))
    assert files, "deploy/k8s has no manifests"
    docs = [doc for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in docs:
        assert {"apiVersion", "kind"} <= doc.keys(), doc
    return docs


def _of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _console_scripts() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


# --- Dockerfile -------------------------------------------------------------------------------------------


def test_dockerfile_builds_one_non_root_image_for_every_service():
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)|^FROM (\S+)", text, re.MULTILINE)
    assert any(re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", arg or base) for arg, base in bases), bases
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs == ["pip install --no-cache-dir -c constraints.txt ."], installs  # pinned, and no extras
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^CMD \["pixpress-ingest"\]', text, re.MULTILINE)
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", ".run", "bench/out", ".pytest_cache", "tests", "testkit"} <= ignored
    assert "constraints.txt" not in ignored


def test_service_dependencies_leave_the_stack_and_test_tools_to_extras():
    """The image installs ``dependencies`` only: supervisor, the command line's libraries and the test tools must not
    be among them, and every runtime dependency is pinned in constraints.txt."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=\[ ;]", requirement)[0].lower() for requirement in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert not runtime & {"supervisor", "click", "rich", "requests", "pytest", "scikit-image", "ruff", "mypy"}, runtime
    assert "supervisor" in {re.split(r"[<>=\[ ;]", r)[0].lower() for r in extras["stack"]}
    assert {"click", "rich", "requests"} <= {re.split(r"[<>=\[ ;]", r)[0].lower() for r in extras["cli"]}
    assert "pixpress[cli]" in extras["stack"]  # make demo runs the command line
    pinned = {
        line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line
    }
    assert runtime <= pinned, runtime - pinned


# --- docker-compose.yml -----------------------------------------------------------------------------------


def test_compose_has_every_service(compose):
    assert set(compose["services"]) >= set(INFRA_SERVICES + PIXPRESS_SERVICES)


def test_compose_images_are_pinned(compose):
    for name, service in compose["services"].items():
        assert "image" in service, f"{name}: no image"
        image = _interpolate(service["image"])
        assert _image_is_pinned(image), f"{name}: image {image!r} is not pinned to a tag"
    assert compose["services"]["minio"]["image"].startswith("minio/minio:RELEASE.")


def test_compose_compressor_can_be_scaled(compose):
    compressor = compose["services"]["compressor"]
    assert "container_name" not in compressor
    assert "ports" not in compressor
    assert compressor.get("deploy", {}).get("replicas") in (None, 1)


def test_compose_pixpress_services_share_the_image_and_start_after_healthy_infra(compose):
    scripts = _console_scripts()
    images = set()
    for name in PIXPRESS_SERVICES:
        service = compose["services"][name]
        images.add(service["image"])
        assert service.get("build"), f"{name}: not built from the Dockerfile"
        assert service["command"] == [f"pixpress-{name}"]
        assert service["command"][0] in scripts
        assert service["restart"] == "unless-stopped"
        grace = int(str(service["stop_grace_period"]).removesuffix("s"))
        assert grace >= 60, f"{name}: graceful shutdown needs up to 60 s"
        depends = service["depends_on"]
        assert "rabbitmq" in depends
        assert all(dep["condition"] == "service_healthy" for dep in depends.values()), name
        assert " ".join(service["healthcheck"]["test"]).count("/healthz") == 1, name
    assert len(images) == 1, f"one image for every service, got {images}"
    assert compose["services"]["ingest"]["ports"] == ["5000:5000"]


def test_compose_infrastructure_has_healthchecks_and_volumes(compose):
    services = compose["services"]
    for name in INFRA_SERVICES:
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["volumes"], name
    assert "rabbitmq-diagnostics" in services["rabbitmq"]["healthcheck"]["test"]
    assert "mongosh" in services["mongo"]["healthcheck"]["test"]
    assert services["minio"]["command"].startswith("server /data")
    assert "5672:5672" in services["rabbitmq"]["ports"]
    assert "9000:9000" in services["minio"]["ports"]  # where PIXPRESS_PUBLIC_BASE_URL points by default
    named = set(compose["volumes"])
    for name in INFRA_SERVICES:
        for volume in services[name]["volumes"]:
            assert volume.split(":")[0] in named, f"{name}: {volume} is not a named volume"


def test_compose_environment_is_valid_settings(compose):
    """The defaults in the compose file must pass the same validation the services run at start."""
    for name in PIXPRESS_SERVICES:
        env = compose["services"][name]["environment"]
        assert isinstance(env, dict), f"{name}: use the mapping form so the shared env anchor can merge"
        values = {key: _interpolate(str(value)) for key, value in env.items() if value is not None}
        # validated as given: model_validate, unlike Settings(), adds nothing from this process's environment
        settings = Settings.model_validate({key.removeprefix(PREFIX).lower(): value for key, value in values.items()})
        assert settings.api_host == "0.0.0.0"
        assert settings.health_host == "0.0.0.0"
        assert settings.health_port == 8080
        assert settings.s3_endpoint == "minio:9000"
        assert "@rabbitmq:5672/" in settings.amqp_url.get_secret_value()
        assert settings.public_base == "http://localhost:9000/pixpress"
        assert settings.allow_private_urls is False
        # an empty webhook secret would fail validation, so optional secrets are passed through, never ""
        for optional in ("PIXPRESS_API_KEY", "PIXPRESS_WEBHOOK_SECRET"):
            assert env.get(optional) is None, f"{name}: {optional} must not default to a value"


# --- Kubernetes -------------------------------------------------------------------------------------------


def test_k8s_has_a_deployment_per_service_and_an_ingest_service(k8s_docs):
    deployments = _of_kind(k8s_docs, "Deployment")
    assert set(deployments) == set(PIXPRESS_SERVICES)
    service = _of_kind(k8s_docs, "Service")["ingest"]
    ingest_ports = {
        port["name"] for port in deployments["ingest"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= ingest_ports
    template_labels = deployments["ingest"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert {doc["metadata"]["namespace"] for doc in k8s_docs if doc["kind"] not in ("Namespace", "Kustomization")} == {
        "pixpress"
    }


@pytest.mark.parametrize("name", PIXPRESS_SERVICES)
def test_k8s_deployment_is_probed_limited_and_unprivileged(k8s_docs, name):
    deployment = _of_kind(k8s_docs, "Deployment")[name]
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["command"] == [f"pixpress-{name}"]
    assert container["command"][0] in _console_scripts()
    assert _image_is_pinned(container["image"])
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert {"readinessProbe", "livenessProbe"} <= container.keys(), name
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in container:
            continue
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz", f"{name}.{probe}"
        assert http["port"] in ports, f"{name}.{probe} uses undeclared port {http['port']}"
    expected_port = 5000 if name == "ingest" else 8080  # PIXPRESS_API_PORT / PIXPRESS_HEALTH_PORT
    assert ports[container["readinessProbe"]["httpGet"]["port"]] == expected_port
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), f"{name}: resources.{kind}"
    refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs == {"pixpress-config", "pixpress-secrets"}


def test_k8s_config_is_valid_settings_and_keeps_secrets_out_of_the_configmap(k8s_docs):
    config = _of_kind(k8s_docs, "ConfigMap")["pixpress-config"]["data"]
    secret = _of_kind(k8s_docs, "Secret")["pixpress-secrets"]["stringData"]
    leaked = SECRET_ENV_NAMES & set(config)
    assert not leaked, f"secrets in the ConfigMap: {leaked}"
    assert not set(config) & set(secret)
    merged = {**config, **secret}
    settings = Settings.model_validate({key.removeprefix(PREFIX).lower(): value for key, value in merged.items()})
    assert settings.api_port == 5000
    assert settings.health_port == 8080
    assert settings.health_host == settings.api_host == "0.0.0.0"
    assert settings.allow_private_urls is False
    assert settings.public_base_url is not None
    for required in ("PIXPRESS_AMQP_URL", "PIXPRESS_MONGO_URL", "PIXPRESS_S3_ACCESS_KEY", "PIXPRESS_S3_SECRET_KEY"):
        assert required in secret


def test_k8s_compressor_is_autoscaled_on_its_queue(k8s_docs):
    (scaled,) = [doc for doc in k8s_docs if doc["kind"] == "ScaledObject"]
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == "compressor"
    assert "replicas" not in _of_kind(k8s_docs, "Deployment")["compressor"]["spec"], "KEDA owns the replica count"
    assert 1 <= scaled["spec"].get("minReplicaCount", 0) < scaled["spec"]["maxReplicaCount"]
    triggers = scaled["spec"]["triggers"]
    queues = [Queue.IMAGES.value, Queue.IMAGES_SUSPECT.value, Queue.IMAGES_BATCH.value]
    assert [t["metadata"]["queueName"] for t in triggers] == queues
    for trigger in triggers:
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert int(trigger["metadata"]["value"]) > 0
        assert trigger["authenticationRef"] == triggers[0]["authenticationRef"]
    trigger = triggers[0]
    auth = _of_kind(k8s_docs, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    secrets = _of_kind(k8s_docs, "Secret")
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    assert ref["key"] in secrets[ref["name"]]["stringData"]


# --- names ------------------------------------------------------------------------------------------------


def test_every_pixpress_variable_is_a_setting(compose, k8s_docs):
    """A misspelt PIXPRESS_* name is silently ignored at run time; here it fails."""
    structured: set[str] = set()
    for service in compose["services"].values():
        env = service.get("environment") or {}
        structured |= set(env) if isinstance(env, dict) else {item.split("=")[0] for item in env}
    for doc in k8s_docs:
        if doc["kind"] in ("ConfigMap", "Secret"):
            structured |= set(doc.get("data") or {}) | set(doc.get("stringData") or {})
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                structured |= {env["name"] for env in container.get("env", [])}
    structured = {name for name in structured if name.startswith(PREFIX)}
    assert len(structured) >= 10, "the deployment files should configure the services"
    # Comments and docs too: deploy/README.md and commented-out optional keys must name real settings.
    sources = [DOCKERFILE, COMPOSE, *K8S_DIR.glob("*.yaml"), ROOT / "deploy" / "README.md"]
    mentioned = {name for path in sources for name in re.findall(r"\bPIXPRESS_[A-Z0-9_]+", path.read_text())}
    unknown = (structured | mentioned) - SETTING_ENV_NAMES
    assert not unknown, f"not fields of shared.settings.Settings: {sorted(unknown)}"
