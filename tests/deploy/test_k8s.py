"""deploy/k8s: renders offline, validates against the Kubernetes schemas, keeps the invariants
the gateway's lifecycle relies on, and stays generated from alerts/ and dashboards/.

The Prometheus Operator's kinds (ServiceMonitor, PrometheusRule) are CRDs with no schema in
``kubernetes-validate``: their shape is checked here field by field, and the PrometheusRule's
groups by ``promtool check rules``.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from routeiq.app import GatewayApp
from routeiq.config.loader import parse_config_text
from tests.deploy.manifests import K8S, REPO, by_kind, generator, render
from tests.observability.promql import promtool_path

K8S_VERSION = "1.32.0"
CRD_GROUP = "monitoring.coreos.com/"
BASE_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "PrometheusRule",
}


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(K8S)


@pytest.fixture(scope="module")
def try_etcd() -> list[dict[str, Any]]:
    return render(K8S / "overlays" / "try-etcd")


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = by_kind(objects, "Deployment", "routeiq")["spec"]["template"]["spec"]
    (only,) = pod["containers"]
    return dict(only)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c["env"]}


def gateway_config(objects: list[dict[str, Any]]) -> Any:
    """The rendered ConfigMap's config, parsed and validated by RouteIQ's own loader."""
    maps = [o for o in objects if o["kind"] == "ConfigMap" and "routeiq.yaml" in o["data"]]
    (config_map,) = maps
    env = {"ROUTEIQ_MASTER_KEY": "m" * 16, "ROUTEIQ_ADMIN_KEY": "a" * 16}
    env |= {"UPSTREAM_API_KEY": "k" * 16, "UPSTREAM_API_BASE": "http://127.0.0.1:9/v1"}
    return parse_config_text(config_map["data"]["routeiq.yaml"], env, source="configmap")


def test_the_base_and_the_overlay_render(
    base: list[dict[str, Any]], try_etcd: list[dict[str, Any]]
) -> None:
    assert {o["kind"] for o in base} == BASE_KINDS
    added = [(o["kind"], o["metadata"]["name"]) for o in try_etcd if o not in base]
    assert sorted(added) == [("Service", "etcd"), ("StatefulSet", "etcd")]
    for o in base:
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "routeiq"


@pytest.mark.parametrize("which", ["base", "try_etcd"])
def test_core_objects_validate_against_the_schemas(
    which: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(which)
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUP):
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    assert checked == len(objects) - 2


def test_the_validator_rejects_a_misspelt_field(base: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(by_kind(base, "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_service_monitor_scrapes_the_service(base: list[dict[str, Any]]) -> None:
    monitor = by_kind(base, "ServiceMonitor")
    service = by_kind(base, "Service", "routeiq")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    assert app_status(endpoint["path"]) != 404  # 503 until the gateway has started


def test_the_prometheus_rule_is_valid_for_promtool(
    base: list[dict[str, Any]], tmp_path: Path
) -> None:
    rule = by_kind(base, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert groups
    for group in groups:
        assert group["name"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and r["expr"]
    promtool = promtool_path()
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/setup dev installs it)")
    rules = tmp_path / "rule.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_objects_match_alerts_and_dashboards(base: list[dict[str, Any]]) -> None:
    gen = generator()
    for name, text in gen.expected().items():
        committed = (gen.OUT / name).read_text(encoding="utf-8")
        assert committed == text, (
            f"deploy/k8s/base/generated/{name} is stale: run python deploy/k8s/generate.py"
        )
    source_groups = [
        g
        for path in sorted((REPO / "alerts").glob("*.rules.yaml"))
        for g in yaml.safe_load(path.read_text())["groups"]
    ]
    assert by_kind(base, "PrometheusRule")["spec"]["groups"] == source_groups
    dashboards = by_kind(base, "ConfigMap", "routeiq-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = {p.name: json.loads(p.read_text()) for p in (REPO / "dashboards").glob("*.json")}
    assert {k: json.loads(v) for k, v in dashboards["data"].items()} == files


def test_the_drift_check_notices_a_changed_source(tmp_path: Path) -> None:
    gen = generator()
    for folder in ("alerts", "dashboards"):
        (tmp_path / folder).mkdir()
    for path in (REPO / "alerts").glob("*.rules.yaml"):
        (tmp_path / "alerts" / path.name).write_text(path.read_text())
    for path in (REPO / "dashboards").glob("*.json"):
        (tmp_path / "dashboards" / path.name).write_text(path.read_text())
    assert gen.expected(tmp_path) == gen.expected()
    source = next((tmp_path / "alerts").glob("*.rules.yaml"))
    data = yaml.safe_load(source.read_text())
    data["groups"][0]["rules"][0]["for"] = "42m"
    source.write_text(yaml.safe_dump(data))
    changed = gen.expected(tmp_path)
    assert changed["prometheusrule.yaml"] != gen.expected()["prometheusrule.yaml"]
    assert changed["dashboards.yaml"] == gen.expected()["dashboards.yaml"]


def app_status(path: str) -> int:
    """Status of ``GET path`` on a real (not started) gateway app: 404 if no such route."""

    async def get() -> int:
        transport = httpx.ASGITransport(app=GatewayApp(env={}))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return (await client.get(path)).status_code

    import anyio

    return anyio.run(get)


def test_probe_paths_are_routes_of_the_app(base: list[dict[str, Any]]) -> None:
    c = container(base)
    paths = {c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"/health/ready", "/health/live"}
    # Before startup: live answers 200 ("starting"), ready 503 (not serving yet); neither 404.
    assert app_status("/health/live") == 200
    assert app_status("/health/ready") == 503
    assert app_status("/health/unknown") == 404
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in port_names
    assert str(port_names["http"]) == env_of(c)["ROUTEIQ_PORT"]["value"]


def test_grace_period_outlasts_prestop_and_the_drain_budget(base: list[dict[str, Any]]) -> None:
    pod = by_kind(base, "Deployment")["spec"]["template"]["spec"]
    c = container(base)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    drain = gateway_config(base).routeiq.drain
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain.delay_s + drain.timeout_s


def test_the_config_map_holds_a_valid_etcd_config(base: list[dict[str, Any]]) -> None:
    config = gateway_config(base)
    assert config.routeiq.leadership.backend == "etcd"
    c = container(base)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert env_of(c)["ROUTEIQ_CONFIG"]["value"] == mounts["config"] + "/routeiq.yaml"


def test_keys_come_from_a_secret(base: list[dict[str, Any]]) -> None:
    env = env_of(container(base))
    for name in ("ROUTEIQ_MASTER_KEY", "ROUTEIQ_ADMIN_KEY", "UPSTREAM_API_KEY"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "routeiq-keys"
    assert not [o for o in base if o["kind"] == "Secret"]


def test_the_pdb_leaves_a_quorum_and_lets_nodes_drain(base: list[dict[str, Any]]) -> None:
    deployment = by_kind(base, "Deployment")
    pdb = by_kind(base, "PodDisruptionBudget")
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 3
    assert replicas // 2 < pdb["spec"]["minAvailable"] < replicas
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_pod_runs_non_root_on_a_read_only_root(base: list[dict[str, Any]]) -> None:
    pod = by_kind(base, "Deployment")["spec"]["template"]["spec"]
    c = container(base)
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile_user = [
        line.split()[1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    assert dockerfile_user == [str(pod["securityContext"]["runAsUser"])]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
