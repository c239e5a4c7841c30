"""The image and the HA stack as files: what ``scripts/e2e-deploy`` then runs for real.

The Dockerfile's final stage runs ``routeiq serve`` under tini as a non-root user with
SIGTERM as its stop signal; the compose stack's gateways wait for a healthy etcd and upstream,
report health on ``/health/ready`` and get a stop grace period longer than their drain budget;
Prometheus scrapes every replica and loads alerts/; Grafana gets dashboards/.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from routeiq.config.loader import parse_config_text
from tests.deploy.manifests import COMPOSE, REPO

GATEWAYS = ("gw1", "gw2", "gw3")


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.ha.yml").read_text())
    return data


def stages() -> list[tuple[str, list[str]]]:
    """``(stage name, instructions)`` of the Dockerfile, in order."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    found: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            found.append((line.split()[-1], []))
        elif found:
            found[-1][1].append(line)
    return found


def test_the_final_stage_is_the_gateway_as_non_root_under_tini() -> None:
    names = [name for name, _ in stages()]
    assert names[0] == "build" and names[-1] == "gateway" and len(names) >= 3
    lines = [line for name, body in stages() if name in ("runtime", "gateway") for line in body]
    assert "STOPSIGNAL SIGTERM" in lines
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user.isdigit() and int(user) != 0
    (entrypoint,) = [line for line in stages()[-1][1] if line.startswith("ENTRYPOINT")]
    assert entrypoint == 'ENTRYPOINT ["tini", "--", "routeiq", "serve"]'
    healthcheck = " ".join(line for line in stages()[-1][1] if line.startswith("HEALTHCHECK"))
    assert "/health/ready" in healthcheck


def test_the_base_image_is_an_argument_defaulting_to_the_official_slim_python() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert all("${BASE_IMAGE}" in line or " AS " in line for line in froms)
    assert "--no-index --find-links /wheels" in text  # the offline path is opt-in (OFFLINE=1)


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    rules = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*"
    included = {line[1:] for line in rules if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "routeiq", "statecharts"} <= included
    assert "tests/support/upstream.py" in included and "tests" not in included


def drain_budget(config_file: str) -> float:
    env = {"ROUTEIQ_MASTER_KEY": "m" * 16, "ROUTEIQ_ADMIN_KEY": "a" * 16}
    env |= {"UPSTREAM_MODEL": "openai/x", "UPSTREAM_API_BASE": "http://upstream:8000/v1"}
    env |= {"UPSTREAM_API_KEY": "k" * 16}
    config = parse_config_text((COMPOSE / config_file).read_text(), env, source=config_file)
    assert config.routeiq.leadership.backend == "etcd"
    return config.routeiq.drain.delay_s + config.routeiq.drain.timeout_s


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return float(match.group(1))


def test_gateways_wait_for_etcd_and_report_readiness(stack: dict[str, Any]) -> None:
    services = stack["services"]
    budget = drain_budget("config/routeiq.yaml")
    ports = set()
    for name in GATEWAYS:
        gw = services[name]
        assert gw["depends_on"]["etcd"]["condition"] == "service_healthy"
        assert gw["depends_on"]["upstream"]["condition"] == "service_healthy"
        assert "/health/ready" in " ".join(gw["healthcheck"]["test"])
        assert seconds(gw["stop_grace_period"]) > budget
        assert gw["stop_signal"] == "SIGTERM"
        assert gw["read_only"] is True
        assert gw["environment"]["ROUTEIQ_LEADERSHIP_BACKEND"] == "etcd"
        assert gw["environment"]["ROUTEIQ_MASTER_KEY"].startswith("${ROUTEIQ_MASTER_KEY:?")
        assert gw["hostname"] == name
        (port,) = gw["ports"]
        assert port.startswith("127.0.0.1:")
        ports.add(port)
    assert len(ports) == 3
    assert "service_healthy" not in str(services["etcd"].get("depends_on"))
    assert "endpoint" in services["etcd"]["healthcheck"]["test"]


def test_prometheus_scrapes_every_replica_with_the_repo_rules(stack: dict[str, Any]) -> None:
    config = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    assert sorted(static["targets"]) == [f"{g}:4000" for g in GATEWAYS]
    volumes = stack["services"]["prometheus"]["volumes"]
    assert "../../alerts:/etc/prometheus/rules:ro" in volumes
    assert config["rule_files"] == ["/etc/prometheus/rules/*.rules.yaml"]
    assert list((REPO / "alerts").glob("*.rules.yaml"))


def test_grafana_is_declared_with_the_repo_dashboards(stack: dict[str, Any]) -> None:
    grafana = stack["services"]["grafana"]
    assert grafana["profiles"] == ["grafana"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provider = yaml.safe_load(
        (COMPOSE / "grafana" / "provisioning" / "dashboards" / "routeiq.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == mounted["../../dashboards"]
