"""Lint the Grafana dashboards in ``dashboards/`` against Grafana's dashboard-linter conventions
and the metrics catalog.

Each rule is a function returning the violations it finds; the rules run on the shipped
dashboards (which must have none) and on broken copies (which must have some), so a rule that
cannot fail is caught too.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from routeiq.observability.catalog import METRICS

from .promql import (
    SCRAPE_SERIES,
    alert_rules,
    expressions_in_dashboard,
    iter_nodes,
    iter_panels,
    label_values_selector,
    metric_names,
    parse,
    promtool_path,
    substitute_variables,
)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "dashboards"
EXPECTED = {
    "lifecycle.json": ("RouteIQ / Lifecycle", "routeiq-lifecycle"),
    "traffic.json": ("RouteIQ / Traffic", "routeiq-traffic"),
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
# A duration no one writes by hand: after substitution, a range equal to it was $__rate_interval.
RATE_INTERVAL_MARK = "4242s"
RANGE_FUNCTIONS = {"rate", "irate", "increase"}
# Grafana unit ids (packages/grafana-data/src/valueFormats/categories.ts) that suit this gateway.
UNITS = {"none", "short", "percent", "percentunit", "s", "ms", "reqps", "ops", "bytes", "bool"}
CATALOG_NAMES = {name for spec in METRICS for name in spec.exposed_names}
RULES_FILE = REPO / "alerts" / "routeiq.rules.yaml"
# Panels that draw an alert's own quantity, with the alert's own windows.
ALERT_QUANTITY_PANELS = {"Leadership changes (alert quantity)": "LeaderElectionChurn"}
# Exact event counts per bar: growth since the previous bar, or the new count after a reset.
EVENT_BARS = "exact delta: (c - c offset $__interval) >= 0 or (c < c offset $__interval)"
SELECTOR_LABELS = ("cluster", "job", "instance")

Dashboard = dict[str, Any]
Rule = Callable[[Dashboard], list[str]]


def load(name: str) -> Dashboard:
    with open(DASHBOARD_DIR / name, encoding="utf-8") as f:
        data: Dashboard = json.load(f)
    return data


def targets(d: Dashboard) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in iter_panels(d) if p.get("type") != "row" for t in p.get("targets", [])]


def variable(d: Dashboard, name: str) -> dict[str, Any] | None:
    for v in d.get("templating", {}).get("list", []):
        if v.get("name") == name:
            return dict(v)
    return None


# --- rules ---------------------------------------------------------------------------------


def rule_model(d: Dashboard) -> list[str]:
    errors = [
        f"missing top-level {key!r}"
        for key in ("panels", "templating", "time", "title", "uid", "tags", "schemaVersion")
        if key not in d
    ]
    if d.get("schemaVersion") != SCHEMA_VERSION:
        errors.append(f"schemaVersion is {d.get('schemaVersion')}, expected {SCHEMA_VERSION}")
    if d.get("editable") is not False:
        errors.append("editable must be false")
    if d.get("id") is not None:
        errors.append("id must be null so that the dashboard imports on any Grafana")
    uid = d.get("uid", "")
    if not (isinstance(uid, str) and 0 < len(uid) <= 40 and uid.replace("-", "").isalnum()):
        errors.append(f"uid {uid!r} must be 1-40 letters, digits or dashes")
    if "routeiq" not in d.get("tags", []):
        errors.append("tags must include 'routeiq'")
    if not {"from", "to"} <= set(d.get("time", {})):
        errors.append("time needs from and to")
    return errors


def rule_datasource_variable(d: Dashboard) -> list[str]:
    found = [v for v in d.get("templating", {}).get("list", []) if v.get("type") == "datasource"]
    if len(found) != 1:
        return [f"expected exactly one datasource variable, found {len(found)}"]
    v = found[0]
    errors = []
    if v.get("name") != "datasource":
        errors.append(f"datasource variable is named {v.get('name')!r}, not 'datasource'")
    if v.get("query") != "prometheus":
        errors.append(f"datasource variable queries {v.get('query')!r}, not 'prometheus'")
    if v.get("label") != "Data source":
        errors.append(f"datasource variable is labelled {v.get('label')!r}, not 'Data source'")
    return errors


def rule_job_instance_variables(d: Dashboard) -> list[str]:
    """cluster, job and instance variables, each filtered by the ones before it
    (kubernetes-mixin / etcd-mixin conventions; ``cluster`` also matches series without it)."""
    errors = []
    for index, name in enumerate(SELECTOR_LABELS):
        v = variable(d, name)
        if v is None:
            errors.append(f"missing the {name} variable")
            continue
        expect = {
            "type": "query",
            "datasource": DATASOURCE,
            "label": name.title(),
            "multi": True,
            "includeAll": True,
            "allValue": ".*" if name == "cluster" else ".+",
            "refresh": 2,
        }
        errors += [
            f"{name} variable: {key} is {v.get(key)!r}, expected {value!r}"
            for key, value in expect.items()
            if v.get(key) != value
        ]
        query = v.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query)
        selector = label_values_selector(query)
        if selector is None or not query.rstrip().endswith(f", {name})"):
            errors.append(f"{name} variable query {query!r} is not label_values(selector, {name})")
            continue
        unknown = metric_names(selector) - CATALOG_NAMES
        if unknown:
            errors.append(f"{name} variable reads metrics not in the catalog: {sorted(unknown)}")
        for before in SELECTOR_LABELS[:index]:
            if f'{before}=~"${before}"' not in selector:
                errors.append(f'{name} variable must be filtered by {before}=~"${before}"')
    return errors


def rule_panel_datasource(d: Dashboard) -> list[str]:
    errors = []
    for panel in iter_panels(d):
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != DATASOURCE:
            errors.append(f"panel {panel.get('title')!r} datasource is {panel.get('datasource')!r}")
        for target in panel.get("targets", []):
            if target.get("datasource") != DATASOURCE:
                errors.append(
                    f"panel {panel.get('title')!r} target {target.get('refId')} "
                    f"datasource is {target.get('datasource')!r}"
                )
    return errors


def rule_panel_ids_and_layout(d: Dashboard) -> list[str]:
    errors = []
    ids = [p.get("id") for p in iter_panels(d)]
    if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
        errors.append(f"panel ids must be unique integers: {ids}")
    boxes: list[tuple[str, int, int, int, int]] = []
    for panel in iter_panels(d):
        grid = panel.get("gridPos", {})
        try:
            x, y, w, h = (int(grid[k]) for k in ("x", "y", "w", "h"))
        except (KeyError, TypeError, ValueError):
            errors.append(f"panel {panel.get('title')!r} has no complete gridPos")
            continue
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > 24:
            errors.append(f"panel {panel.get('title')!r} gridPos {grid} is outside the grid")
        for title, ox, oy, ow, oh in boxes:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                errors.append(f"panel {panel.get('title')!r} overlaps {title!r}")
        boxes.append((str(panel.get("title")), x, y, w, h))
    return errors


def rule_units_and_descriptions(d: Dashboard) -> list[str]:
    errors = []
    for panel in iter_panels(d):
        if panel.get("type") == "row":
            continue
        title = panel.get("title")
        if not title:
            errors.append(f"panel {panel.get('id')} has no title")
        if not str(panel.get("description", "")).strip():
            errors.append(f"panel {title!r} has no description")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit not in UNITS:
            errors.append(f"panel {title!r} has no or an unknown unit: {unit!r}")
        if not any(t.get("expr") for t in panel.get("targets", [])):
            errors.append(f"panel {title!r} has no query")
    return errors


def _parse_target(expr: str) -> Any:
    return parse(expr, rate_interval=RATE_INTERVAL_MARK, label_value=None)


def rule_promql_parses(d: Dashboard) -> list[str]:
    errors = []
    for expr in expressions_in_dashboard(d):
        try:
            parse(expr)
        except ValueError as exc:
            errors.append(f"invalid PromQL {expr!r}: {exc}")
    return errors


def rule_job_instance_matchers(d: Dashboard) -> list[str]:
    errors = []
    for panel, target in targets(d):
        for node in iter_nodes(_parse_target(target["expr"])):
            if not isinstance(node.expr, promql_parser.VectorSelector):
                continue
            matchers = node.expr.matchers.matchers
            for label in SELECTOR_LABELS:
                if not any(
                    m.name == label and m.op == promql_parser.MatchOp.Re and m.value == f"${label}"
                    for m in matchers
                ):
                    errors.append(
                        f"panel {panel['title']!r}: selector {node.expr} does not filter "
                        f'{label}=~"${label}"'
                    )
    return errors


def rule_rate_interval(d: Dashboard) -> list[str]:
    errors = []
    mark = promql_parser.parse_duration(RATE_INTERVAL_MARK)
    for panel, target in targets(d):
        if panel.get("title") in ALERT_QUANTITY_PANELS:
            continue  # the alert's own windows; test_alert_quantity_panels_draw_the_alert
        for node in iter_nodes(_parse_target(target["expr"])):
            if isinstance(node.expr, promql_parser.MatrixSelector) and node.expr.range != mark:
                errors.append(
                    f"panel {panel['title']!r}: range {node.expr} must be [$__rate_interval]"
                )
            if isinstance(node.expr, promql_parser.SubqueryExpr):
                errors.append(f"panel {panel['title']!r}: subquery {node.expr} is not allowed")
    return errors


def _is_event_delta(selector: Any, parents: tuple[Any, ...]) -> bool:
    """``c - c offset $__interval`` under ``>= 0``, or ``c < c offset $__interval``."""
    if not parents or not isinstance(parents[-1], promql_parser.BinaryExpr):
        return False
    binary = parents[-1]
    operands: list[Any] = [binary.lhs, binary.rhs]
    if not all(isinstance(o, promql_parser.VectorSelector) for o in operands):
        return False
    if {o.name for o in operands} != {selector.name}:
        return False
    if [o.offset is not None for o in operands] != [False, True]:
        return False
    if str(binary.op) == "<":
        return True
    if str(binary.op) != "-":
        return False
    return any(
        isinstance(p, promql_parser.BinaryExpr)
        and str(p.op) == ">="
        and isinstance(p.rhs, promql_parser.NumberLiteral)
        and p.rhs.val == 0
        for p in parents[:-1]
    )


def rule_counters_in_rate(d: Dashboard) -> list[str]:
    errors = []
    for panel, target in targets(d):
        for node in iter_nodes(_parse_target(target["expr"])):
            selector = node.expr
            if not isinstance(selector, promql_parser.VectorSelector):
                continue
            if not str(selector.name or "").endswith("_total"):
                continue
            parents = node.parents
            ok = (
                len(parents) >= 2
                and isinstance(parents[-1], promql_parser.MatrixSelector)
                and isinstance(parents[-2], promql_parser.Call)
                and parents[-2].func.name in RANGE_FUNCTIONS
            ) or _is_event_delta(selector, parents)
            if not ok:
                errors.append(
                    f"panel {panel['title']!r}: counter {selector.name} is not inside "
                    f"rate(), irate() or increase(), nor an {EVENT_BARS}"
                )
    return errors


def rule_histograms_by_le(d: Dashboard) -> list[str]:
    errors = []
    for panel, target in targets(d):
        for node in iter_nodes(_parse_target(target["expr"])):
            selector = node.expr
            if not isinstance(selector, promql_parser.VectorSelector):
                continue
            if not str(selector.name or "").endswith("_bucket"):
                continue
            grouped = any(
                isinstance(p, promql_parser.AggregateExpr)
                and p.modifier is not None
                and p.modifier.type == promql_parser.AggModifierType.By
                and "le" in p.modifier.labels
                for p in node.parents
            )
            in_quantile = any(
                isinstance(p, promql_parser.Call) and p.func.name == "histogram_quantile"
                for p in node.parents
            )
            if not (grouped and in_quantile):
                errors.append(
                    f"panel {panel['title']!r}: {selector.name} must be aggregated by le "
                    "inside histogram_quantile()"
                )
    return errors


def rule_metrics_in_catalog(d: Dashboard) -> list[str]:
    errors = []
    for expr in expressions_in_dashboard(d):
        unknown = metric_names(expr) - CATALOG_NAMES - SCRAPE_SERIES
        if unknown:
            errors.append(f"{expr!r} selects metrics not in the catalog: {sorted(unknown)}")
    return errors


def rule_label_values_in_catalog(d: Dashboard) -> list[str]:
    """Every literal label value a query matches on is one the code emits (catalog)."""
    errors = []
    for expr in expressions_in_dashboard(d):
        for node in iter_nodes(parse(expr, label_value=None)):
            selector = node.expr
            if not isinstance(selector, promql_parser.VectorSelector) or selector.name is None:
                continue
            spec = next((s for s in METRICS if selector.name in s.exposed_names), None)
            if spec is None:
                continue
            for m in selector.matchers.matchers:
                if m.name not in spec.labels or m.op != promql_parser.MatchOp.Equal:
                    continue
                if m.value not in spec.values_of(m.name):
                    errors.append(f"{selector.name}{{{m.name}={m.value!r}}} is never emitted")
    return errors


RULES: list[Rule] = [
    rule_model,
    rule_datasource_variable,
    rule_job_instance_variables,
    rule_panel_datasource,
    rule_panel_ids_and_layout,
    rule_units_and_descriptions,
    rule_promql_parses,
    rule_job_instance_matchers,
    rule_rate_interval,
    rule_counters_in_rate,
    rule_histograms_by_le,
    rule_metrics_in_catalog,
    rule_label_values_in_catalog,
]


# --- the shipped dashboards ----------------------------------------------------------------


def test_dashboards_are_the_expected_ones() -> None:
    assert sorted(p.name for p in DASHBOARD_DIR.glob("*.json")) == sorted(EXPECTED)
    for name, (title, uid) in EXPECTED.items():
        d = load(name)
        assert (d["title"], d["uid"]) == (title, uid)
    titles = [load(n)["title"] for n in EXPECTED]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_dashboard_rule(name: str, rule: Rule) -> None:
    assert rule(load(name)) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_queries_the_catalog(name: str) -> None:
    # Each panel reads at least one catalog metric, and the dashboard reads several.
    d = load(name)
    used: set[str] = set()
    for panel in iter_panels(d):
        if panel.get("type") == "row":
            continue
        names = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
        assert names, panel["title"]
        used |= names
    assert used <= CATALOG_NAMES | SCRAPE_SERIES
    assert len(used) >= 5


def test_lifecycle_dashboard_covers_the_lifecycle_metrics() -> None:
    used = set().union(*(metric_names(e) for e in expressions_in_dashboard(load("lifecycle.json"))))
    assert {
        "gateway_startup_duration_seconds_sum",
        "gateway_startup_duration_seconds_count",
        "gateway_last_startup_duration_seconds",
        "gateway_component_init_duration_seconds_sum",
        "gateway_lifecycle_state",
        "gateway_startup_failures_total",
        "gateway_service_restarts_total",
        "leader_election_status",
        "leader_election_churn_total",
        "gateway_config_reloads_total",
        "gateway_config_revision",
        "gateway_start_time_seconds",
        "up",
    } <= used


def _without_selectors(expr: str) -> str:
    text = expr.replace('{cluster=~"$cluster", job=~"$job", instance=~"$instance"}', "")
    return " ".join(text.split())


def test_alert_quantity_panels_draw_the_alert() -> None:
    alerts = {a["alert"]: a for a in alert_rules(RULES_FILE)}
    panels = {p["title"]: p for p in iter_panels(load("lifecycle.json"))}
    for title, alert in ALERT_QUANTITY_PANELS.items():
        (target,) = panels[title]["targets"]
        expr = " ".join(alerts[alert]["expr"].split())
        quantity, _, threshold = expr.rpartition(") >")
        assert quantity.startswith("(") and threshold.strip()
        assert _without_selectors(target["expr"]) == quantity[1:].strip()


def test_rows_group_the_lifecycle_dashboard() -> None:
    rows = [p["title"] for p in load("lifecycle.json")["panels"] if p["type"] == "row"]
    assert rows == ["Availability", "Startup", "Lifecycle and services", "Leadership", "Config"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_restart_and_reload_annotations(name: str) -> None:
    annotations = {a["name"]: a for a in load(name)["annotations"]["list"]}
    assert {"Restarts", "Config reloads"} <= set(annotations)
    for title in ("Restarts", "Config reloads"):
        annotation = annotations[title]
        assert annotation["datasource"] == DATASOURCE and annotation["enable"] is True
        names = metric_names(annotation["expr"])
        assert names and names <= CATALOG_NAMES
        for node in iter_nodes(parse(annotation["expr"], label_value=None)):
            if isinstance(node.expr, promql_parser.VectorSelector):
                labels = {m.name: m.value for m in node.expr.matchers.matchers}
                assert {k: labels.get(k) for k in SELECTOR_LABELS} == {
                    k: f"${k}" for k in SELECTOR_LABELS
                }


def test_traffic_dashboard_covers_the_traffic_metrics() -> None:
    used = set().union(*(metric_names(e) for e in expressions_in_dashboard(load("traffic.json"))))
    assert {
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_tokens_total",
        "gateway_inflight_requests",
        "gateway_routing_decisions_total",
    } <= used


# --- the queries in Prometheus itself ------------------------------------------------------

STATES = [
    "created",
    "configured",
    "observing",
    "patched",
    "serving",
    "draining",
    "stopped",
    "failed",
]


def _lifecycle_state_series() -> list[dict[str, str]]:
    # Live workers per state (livesum): instance a has two serving workers; instance b has one
    # serving and one draining worker.
    current = {"a": {"serving": 2}, "b": {"serving": 1, "draining": 1}}
    series = []
    for instance, workers in current.items():
        for state in STATES:
            labels = f'job="routeiq", instance="{instance}", state="{state}"'
            series.append(
                {
                    "series": f"gateway_lifecycle_state{{{labels}}}",
                    "values": f"{workers.get(state, 0)}x10",
                }
            )
    return series


def test_queries_evaluate_in_prometheus(tmp_path: Path) -> None:
    """Prometheus's own parser accepts every query, and the lifecycle state timeline maps
    each worker to the index of its state in the panel's value mappings."""
    promtool = promtool_path()
    if promtool is None:
        pytest.fail("promtool not found; run scripts/test, which installs it")
    exprs = [
        substitute_variables(e, label_value=".+")
        for name in sorted(EXPECTED)
        for e in expressions_in_dashboard(load(name))
    ]
    (state_panel,) = [
        p for p in iter_panels(load("lifecycle.json")) if p["title"] == "Lifecycle state"
    ]
    mapping = state_panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    index = {option["text"]: int(value) for value, option in mapping.items()}
    assert sorted(index, key=index.__getitem__) == STATES
    state_expr = substitute_variables(state_panel["targets"][0]["expr"], label_value=".+")
    cases: list[dict[str, Any]] = [{"expr": e, "eval_time": "1m", "exp_samples": []} for e in exprs]
    cases.append(
        {
            "expr": state_expr,
            "eval_time": "5m",
            "exp_samples": [
                {"labels": '{instance="a"}', "value": index["serving"]},
                {"labels": '{instance="b"}', "value": index["draining"]},
            ],
        }
    )
    suite = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": [], "promql_expr_test": cases[:-1]},
            {
                "interval": "1m",
                "input_series": _lifecycle_state_series(),
                "promql_expr_test": cases[-1:],
            },
        ],
    }
    path = tmp_path / "dashboards.test.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the rules can fail --------------------------------------------------------------------


def _first_panel(d: Dashboard) -> dict[str, Any]:
    return next(p for p in d["panels"] if p.get("type") != "row")


def _set_first_expr(d: Dashboard, expr: str) -> None:
    _first_panel(d)["targets"][0]["expr"] = expr


SEL = 'cluster=~"$cluster", job=~"$job", instance=~"$instance"'
BREAKAGES: list[tuple[Rule, Callable[[Dashboard], None]]] = [
    (rule_model, lambda d: d.update(editable=True)),
    (rule_model, lambda d: d.update(schemaVersion=16)),
    (rule_model, lambda d: d.pop("templating")),
    (
        rule_datasource_variable,
        lambda d: d["templating"]["list"].append(d["templating"]["list"][0]),
    ),
    (rule_datasource_variable, lambda d: d["templating"]["list"][0].update(query="loki")),
    (rule_job_instance_variables, lambda d: d["templating"]["list"].pop(1)),
    (rule_job_instance_variables, lambda d: d["templating"]["list"][2].update(allValue=None)),
    (
        rule_job_instance_variables,
        lambda d: d["templating"]["list"][1].update(query="label_values(up, job)"),
    ),
    (rule_panel_datasource, lambda d: d["panels"][1].update(datasource={"uid": "prom-1"})),
    (rule_panel_datasource, lambda d: d["panels"][1]["targets"][0].pop("datasource")),
    (rule_panel_ids_and_layout, lambda d: d["panels"][2].update(id=d["panels"][1]["id"])),
    (rule_panel_ids_and_layout, lambda d: d["panels"][2].update(gridPos=d["panels"][1]["gridPos"])),
    (rule_units_and_descriptions, lambda d: d["panels"][1].pop("description")),
    (rule_units_and_descriptions, lambda d: d["panels"][1]["fieldConfig"]["defaults"].pop("unit")),
    (rule_promql_parses, lambda d: _set_first_expr(d, "sum(rate(x[$__rate_interval])")),
    (
        rule_job_instance_matchers,
        lambda d: _set_first_expr(d, 'gateway_inflight_requests{job=~"$job"}'),
    ),
    (
        rule_rate_interval,
        lambda d: _set_first_expr(d, f"rate(gateway_tokens_total{{{SEL}}}[5m])"),
    ),
    (
        rule_counters_in_rate,
        lambda d: _set_first_expr(d, f"sum(gateway_tokens_total{{{SEL}}})"),
    ),
    (
        rule_counters_in_rate,
        lambda d: _set_first_expr(
            d, f"max_over_time(gateway_tokens_total{{{SEL}}}[$__rate_interval])"
        ),
    ),
    (
        rule_histograms_by_le,
        lambda d: _set_first_expr(
            d,
            "histogram_quantile(0.9, sum(rate("
            f"gateway_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
        ),
    ),
    (
        rule_counters_in_rate,
        lambda d: _set_first_expr(
            d, f"gateway_tokens_total{{{SEL}}} - gateway_tokens_total{{{SEL}}} offset 1m"
        ),
    ),
    (
        rule_metrics_in_catalog,
        lambda d: _set_first_expr(d, f"gateway_startup_seconds{{{SEL}}}"),
    ),
    (
        rule_label_values_in_catalog,
        lambda d: _set_first_expr(d, f'gateway_lifecycle_state{{{SEL}, state="running"}}'),
    ),
    (
        rule_label_values_in_catalog,
        lambda d: _set_first_expr(
            d, f'gateway_component_init_duration_seconds_count{{{SEL}, component="strategies"}}'
        ),
    ),
]


@pytest.mark.parametrize(
    ("rule", "breakage"),
    BREAKAGES,
    ids=[f"{rule.__name__}-{i}" for i, (rule, _) in enumerate(BREAKAGES)],
)
def test_rule_catches_a_broken_dashboard(rule: Rule, breakage: Callable[[Dashboard], None]) -> None:
    d = copy.deepcopy(load("lifecycle.json"))
    assert rule(d) == []
    breakage(d)
    assert rule(d) != []


def test_every_rule_has_a_breakage() -> None:
    assert {rule for rule, _ in BREAKAGES} == set(RULES)


def test_panels_named_in_the_runbooks_exist() -> None:
    text = (REPO / "docs" / "runbooks.md").read_text(encoding="utf-8")
    quoted = {" ".join(q.split()) for q in re.findall(r'"([A-Z][^"$]*)"', text)}
    titles = {str(p.get("title")) for name in EXPECTED for p in iter_panels(load(name))}
    assert "Target health" in quoted
    assert quoted - titles == set()
