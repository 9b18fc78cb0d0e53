"""The ways to run it, checked offline: Dockerfile, compose stack, Kubernetes manifests, systemd unit."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from exporter.cli.main import build_parser
from exporter.config.settings import DEFAULT_PORT, load_config, validate
from exporter.simulator import World

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))


def cli_accepts(args: list[str]) -> None:
    build_parser().parse_args(args)  # raises SystemExit on an unknown flag


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text("utf-8"))
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile():
    """Offline checks of the Dockerfile; tests/test_container.py builds it with buildah and runs it."""
    steps = dockerfile()
    instructions = [i for i, _ in steps]
    assert instructions[0] == "ARG" and steps[0][1].startswith("BASE=python:3.11-slim")  # the base is an argument
    assert [a for i, a in steps if i == "FROM"] == ["${BASE} AS build", "${BASE}"]  # multi-stage, one base
    for instruction, argument in steps:
        if instruction == "COPY" and "--from" not in argument:
            for source in argument.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
    user = dict(steps)["USER"]
    assert user.split(":")[0].isdigit() and user != "0"  # non-root, numeric for runAsNonRoot
    assert dict(steps)["EXPOSE"] == str(DEFAULT_PORT)
    healthcheck = yaml.safe_load(dict(steps)["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert healthcheck[0] in PYPROJECT["project"]["scripts"]
    cli_accepts(healthcheck[1:])
    entrypoint = yaml.safe_load(dict(steps)["ENTRYPOINT"])
    assert entrypoint == list(PYPROJECT["project"]["scripts"])
    cli_accepts(yaml.safe_load(dict(steps)["CMD"]))
    installs = " ".join(a for i, a in steps if i == "RUN")
    assert "venv" in installs and "pip install --no-cache-dir --disable-pip-version-check ." in installs
    ignored = (ROOT / ".dockerignore").read_text("utf-8").split()
    assert ignored[ignored.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!exporter/"]


def test_compose_validates_against_the_compose_specification():
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "docker-compose.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_mounts_commands_and_demo():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text("utf-8"))
    services = compose["services"]
    assert {"exporter", "exporter-demo", "simulator", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    for name in ("exporter", "exporter-demo", "simulator"):
        cli_accepts(services[name]["command"])
    assert "demo" in services["simulator"]["profiles"] and "demo" in services["exporter-demo"]["profiles"]
    demo = load_config(DEPLOY / "compose" / "demo.yaml")
    assert demo.discovery[0].business_id == World(1, seed=1).agency_id  # the simulator's agency sees every pixel
    load_config(DEPLOY / "compose" / "config.yaml")
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text("utf-8"))
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == [f"exporter:{DEFAULT_PORT}"]


@pytest.fixture(scope="module")
def rendered():
    assert shutil.which("kubectl"), "kubectl is needed (make test installs Debian's kubernetes-client)"

    def render(name: str) -> list[dict]:
        result = subprocess.run(
            ["kubectl", "kustomize", str(DEPLOY / "kubernetes" / name)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]

    return {name: render(name) for name in ("base", "sharded")}


def test_kustomize_renders_base_and_sharded(rendered):
    kinds = {name: sorted(d["kind"] for d in docs) for name, docs in rendered.items()}
    common = ["ConfigMap", "NetworkPolicy", "PrometheusRule", "Service", "ServiceMonitor"]
    assert kinds["base"] == sorted([*common, "Deployment"])
    assert kinds["sharded"] == sorted([*common, "Service", "StatefulSet"])  # and the shards' headless Service
    for docs in rendered.values():
        workload = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))
        pod = workload["spec"]["template"]["spec"]
        assert (
            pod["securityContext"]["runAsNonRoot"] and pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        )
        container = pod["containers"][0]
        args = container.get("args") or shlex.split(container["command"][-1].replace('"${HOSTNAME##*-}"', "0"))[2:]
        cli_accepts(args)
        config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"]
        validate(yaml.safe_load(config), "configmap")
    statefulset = next(d for d in rendered["sharded"] if d["kind"] == "StatefulSet")
    command = statefulset["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert f"--shard-count {statefulset['spec']['replicas']}" in command and "${HOSTNAME##*-}" in command


SCHEMAS = {  # kind -> vendored schema (tests/fixtures/schemas/README.md says where each comes from)
    "ConfigMap": "configmap-v1",
    "Deployment": "deployment-apps-v1",
    "NetworkPolicy": "networkpolicy-networking-v1",
    "Service": "service-v1",
    "StatefulSet": "statefulset-apps-v1",
    "ServiceMonitor": "servicemonitor_v1",
    "PrometheusRule": "prometheusrule_v1",
}


def test_rendered_manifests_are_valid_kubernetes_and_prometheus_operator_objects(rendered):
    import gzip

    import jsonschema

    for name, docs in rendered.items():
        for doc in docs:
            path = ROOT / "tests" / "fixtures" / "schemas" / f"{SCHEMAS[doc['kind']]}.json.gz"
            schema = json.loads(gzip.decompress(path.read_bytes()))
            validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)(schema)
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
            assert not errors, f"{name}: {doc['kind']} {doc['metadata']['name']}: {errors[:3]}"
            wrong = json.loads(json.dumps(doc))
            wrong["spec"] = {**wrong.get("spec", {}), "serviceNmae": "x"} if "spec" in wrong else wrong
            wrong["metadata"]["lables"] = {"a": "b"}  # a typo the cluster would refuse, or drop silently
            assert not validator.is_valid(wrong), f"the {doc['kind']} schema accepts anything"


def test_kubernetes_files_work_with_kustomize_5_and_kube_prometheus_stack(rendered):
    for name in ("base", "sharded"):
        kustomization = yaml.safe_load((DEPLOY / "kubernetes" / name / "kustomization.yaml").read_text("utf-8"))
        assert not {"commonLabels", "patchesStrategicMerge"} & set(kustomization), "deprecated in kustomize 5"
    base = yaml.safe_load((DEPLOY / "kubernetes" / "base" / "kustomization.yaml").read_text("utf-8"))
    assert base["images"][0]["name"] == "meta-dataset-quality-exporter"  # where a user sets their pushed image
    for docs in rendered.values():
        for doc in docs:
            if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):  # kube-prometheus-stack's default selectors
                assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack", doc["kind"]
        monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        scraped = [d for d in docs if d["kind"] == "Service" and wanted <= d["metadata"].get("labels", {}).items()]
        assert len(scraped) == 1, "the ServiceMonitor selects one Service: each target scraped once"
    statefulset = next(d for d in rendered["sharded"] if d["kind"] == "StatefulSet")
    governing = next(d for d in rendered["sharded"] if d["metadata"]["name"] == statefulset["spec"]["serviceName"])
    assert governing["kind"] == "Service" and governing["spec"]["clusterIP"] == "None"  # headless
    docs = (ROOT / "docs" / "deployment.md").read_text("utf-8")
    assert "kustomize edit set image" in docs and "buildah push" in docs


def test_prometheusrule_holds_exactly_the_shipped_rules(rendered):
    shipped = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        shipped += yaml.safe_load(path.read_text("utf-8"))["groups"]
    rule = next(d for d in rendered["base"] if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == shipped
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_prometheusrule.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_systemd_unit():
    lines = (DEPLOY / "systemd" / "meta-dataset-quality-exporter.service").read_text("utf-8").splitlines()
    settings: dict[str, list[str]] = {}
    for line in lines:
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "DynamicUser": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6"}.items():  # fmt: skip
        assert settings[key] == [value], key
    assert settings["CapabilityBoundingSet"] == [""] and "LoadCredential" in settings
    command = shlex.split(settings["ExecStart"][0])
    assert command[0].endswith("/meta-dataset-quality-exporter")
    cli_accepts(command[1:])
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP reloads
