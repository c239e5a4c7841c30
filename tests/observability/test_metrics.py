"""What a real gateway exports, checked against the catalog: the component names it emits, the
counters it creates at 0 before their first event, no per-pid series, no ``*_created``."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, get_type_hints

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from routeiq.app import GatewayApp
from routeiq.lifecycle.events import EventKind
from routeiq.observability.catalog import COMPONENTS, METRICS, metric_by_name
from routeiq.observability.metrics import GatewayMetrics
from tests.support.asgi import running_app

pytestmark = pytest.mark.anyio

MODEL = {
    "model_name": "m",
    "litellm_params": {"model": "openai/m", "mock_response": "hi", "api_key": "sk-up-123"},
}
PLACEHOLDER = re.compile(r"^(service|hook):.+$")


def write_config(tmp_path: Path) -> Path:
    routeiq: dict[str, Any] = {
        "event_log": {"path": str(tmp_path / "events.jsonl")},
        "passthrough": True,
        "hooks": [
            {"phase": "observe", "call": "tests.support.hooks:record", "name": "observed"},
            {"phase": "serve", "call": "tests.support.hooks:record", "name": "served"},
        ],
        "services": [{"name": "steady", "call": "tests.support.hooks:steady_service"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [MODEL], "routeiq": routeiq}))
    return path


def generic(component: str) -> str:
    """``hook:observed`` → ``hook:<name>``: the catalog's spelling of a configured name."""
    return PLACEHOLDER.sub(lambda m: f"{m.group(1)}:<name>", component)


Sample = tuple[str, dict[str, str], float]


def samples(text: str) -> list[Sample]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


@pytest.fixture
async def served(tmp_path: Path) -> tuple[list[str], str]:
    """The components a gateway with every optional component emitted, and its /metrics."""
    app = GatewayApp(env={}, config_path=write_config(tmp_path))
    async with running_app(app) as client:
        text = (await client.get("/metrics")).text
    assert app.gateway is not None
    components = [
        str(e.component)
        for e in app.gateway.events.events
        if e.kind == EventKind.COMPONENT and e.ok
    ]
    return components, text


async def test_components_emitted_are_the_catalogs_in_order(served: tuple[list[str], str]) -> None:
    components, text = served
    # Services start in configuration order before RouteIQ's own; hooks run at the end of
    # their phase (the observe hook after tracing, the serve hook last).
    assert components == [
        "config",
        "event_sink",
        "metrics",
        "logging",
        "tracing",
        "hook:observed",
        "litellm",
        "router",
        "http_client",
        "mcp_registry",
        "mcp-endpoint",
        "mcp-registry",
        "service:steady",
        "config-sync",
        "leadership",
        "hook:served",
    ]
    assert sorted(set(map(generic, components))) == sorted(COMPONENTS)
    exported = {
        labels["component"]
        for name, labels, _ in samples(text)
        if name == "gateway_component_init_duration_seconds_count"
    }
    assert exported == set(components)


async def test_event_counters_exist_at_zero_before_their_first_event(
    served: tuple[list[str], str],
) -> None:
    _, text = served
    found = samples(text)

    def value(name: str, **labels: str) -> float | None:
        matching = [v for n, lab, v in found if n == name and lab == labels]
        return matching[0] if matching else None

    failures = metric_by_name("gateway_startup_failures_total")
    for phase in failures.values_of("phase"):
        assert value("gateway_startup_failures_total", phase=phase) == 0, phase
    for result in ("applied", "rejected"):
        assert value("gateway_config_reloads_total", result=result) == 0
    for kind in ("input", "output"):
        assert value("gateway_tokens_total", type=kind) == 0
    for service in ("steady", "config-sync", "leadership"):
        assert value("gateway_service_restarts_total", service=service) == 0
        assert value("gateway_service_crashes_total", service=service) == 0
        assert value("gateway_service_starts_total", service=service) == 1
    start = value("gateway_start_time_seconds")
    assert start is not None and time.time() - 600 < start <= time.time()


async def test_no_created_series_and_no_pid_label(served: tuple[list[str], str]) -> None:
    _, text = served
    found = samples(text)
    assert not [n for n, _, _ in found if n.endswith("_created")]
    assert not [n for n, labels, _ in found if "pid" in labels]
    exported = {n for n, _, _ in found}
    # Unlabelled metrics exist from the start (labelled ones from their first value).
    assert {n for spec in METRICS if not spec.labels for n in spec.exposed_names} <= exported
    states = {lab["state"]: v for n, lab, v in found if n == "gateway_lifecycle_state"}
    assert states == {state: float(state == "serving") for state in states}
    assert set(states) == set(metric_by_name("gateway_lifecycle_state").values_of("state"))


def test_closed_label_sets_are_only_fixed_values() -> None:
    assert metric_by_name("gateway_config_reloads_total").closed_label_sets == (
        ("applied", "rejected"),
    )
    # A configured name cannot be known before the config: not created ahead.
    assert metric_by_name("gateway_service_restarts_total").closed_label_sets is None
    assert metric_by_name("gateway_lifecycle_transitions_total").closed_label_sets is None
    assert metric_by_name("leader_election_churn_total").closed_label_sets is None
    for spec in (s for s in METRICS if s.type == "gauge"):
        assert spec.gauge_mode not in ("all", "liveall"), f"{spec.name} has a pid label"


def test_every_catalog_metric_is_a_typed_handle() -> None:
    """``GatewayMetrics`` declares one attribute per catalog entry, named and typed as it is:
    code reads ``metrics.<name>`` and mypy checks the name and the collector's type."""
    from prometheus_client import Counter, Gauge, Histogram

    kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    hints = get_type_hints(
        GatewayMetrics, localns={"Counter": Counter, "Gauge": Gauge, "Histogram": Histogram}
    )
    handles = {name: hint for name, hint in hints.items() if hint in kinds.values()}
    assert handles == {spec.name: kinds[spec.type] for spec in METRICS}
    metrics = GatewayMetrics()
    for spec in METRICS:
        assert isinstance(getattr(metrics, spec.name), kinds[spec.type]), spec.name
