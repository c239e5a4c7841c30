"""The alert rules in ``alerts/``: promtool accepts them and their unit tests pass, they follow
the monitoring-mixin conventions, read only catalog metrics, and every alert has a runbook
section and unit tests where it fires and where it stays silent."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from routeiq.observability.catalog import COMPONENTS, METRICS, metric_by_name

from .promql import (
    SCRAPE_JOB,
    SCRAPE_SERIES,
    alert_rules,
    expressions_in_rules,
    iter_nodes,
    metric_names,
    parse,
    promtool_path,
)

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "alerts" / "routeiq.rules.yaml"
RULES_TEST_FILE = REPO / "alerts" / "tests" / "routeiq.rules.test.yaml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/routeiq/routeiq/blob/main/docs/runbooks.md#"
REQUIRED_ALERTS = {
    "GatewayTargetDown",
    "GatewayTargetAbsent",
    "GatewayCrashLooping",
    "GatewayStartupSlow",
    "GatewayStartupFailed",
    "LeaderElectionChurn",
    "LeaderElectionNoLeader",
    "LeaderElectionSplitBrain",
    "GatewayConfigReloadRejected",
    "GatewayHighErrorRate",
    "GatewayServiceRestarting",
    "GatewayWorkerRestarting",
    "GatewayLoadShedding",
}
CAMEL_CASE = re.compile(r"^(?:[A-Z][a-z0-9]+)+$")
CATALOG_NAMES = {name for spec in METRICS for name in spec.exposed_names}
# Counters read raw count events of unknown age: alerts read them through these only.
COUNTER_FUNCTIONS = {"increase", "rate"}

Alert = dict[str, Any]


def promtool() -> str:
    found = promtool_path()
    if found:
        return found
    pytest.fail(
        "promtool not found on PATH nor at .cache/tools/prom/usr/bin/promtool; "
        "run scripts/test, which installs it"
    )


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_headings() -> dict[str, str]:
    text = RUNBOOKS.read_text(encoding="utf-8")
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE)
    return {github_anchor(h): h for h in headings}


def load_alerts() -> list[Alert]:
    return alert_rules(RULES_FILE)


def load_rule_tests() -> dict[str, Any]:
    with open(RULES_TEST_FILE, encoding="utf-8") as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


# --- promtool ------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(RULES_FILE.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules() -> None:
    result = run_promtool("test", "rules", str(RULES_TEST_FILE.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_can_fail(tmp_path: Path) -> None:
    # The same unit tests against rules with a wrong threshold must fail.
    (tmp_path / "tests").mkdir()
    broken = RULES_FILE.read_text(encoding="utf-8").replace(
        "(gateway_last_startup_duration_seconds) > 30",
        "(gateway_last_startup_duration_seconds) > 50",
    )
    assert broken != RULES_FILE.read_text(encoding="utf-8")
    (tmp_path / "routeiq.rules.yaml").write_text(broken, encoding="utf-8")
    shutil.copy(RULES_TEST_FILE, tmp_path / "tests" / RULES_TEST_FILE.name)
    result = run_promtool("test", "rules", str(tmp_path / "tests" / RULES_TEST_FILE.name))
    assert result.returncode != 0
    assert "GatewayStartupSlow" in result.stdout + result.stderr


# --- monitoring-mixin conventions ----------------------------------------------------------


def lint_alert(alert: Alert, anchors: set[str]) -> list[str]:
    name = str(alert.get("alert", ""))
    errors = []
    if not CAMEL_CASE.match(name):
        errors.append(f"alert name {name!r} is not CamelCase")
    severity = alert.get("labels", {}).get("severity")
    if severity not in {"warning", "critical"}:
        errors.append(f"{name}: severity is {severity!r}, not warning or critical")
    annotations = alert.get("annotations", {})
    summary = str(annotations.get("summary", ""))
    if not summary or "{{" in summary or not summary.endswith("."):
        errors.append(f"{name}: summary {summary!r} must be plain text ending with '.'")
    description = str(annotations.get("description", ""))
    if "{{" not in description or "$labels" not in description:
        errors.append(f"{name}: description {description!r} is not templated with $labels")
    url = str(annotations.get("runbook_url", ""))
    anchor = url.removeprefix(RUNBOOK_BASE)
    if not url.startswith(RUNBOOK_BASE) or anchor != name.lower():
        errors.append(f"{name}: runbook_url {url!r} must be {RUNBOOK_BASE}{name.lower()}")
    elif anchor not in anchors:
        errors.append(f"{name}: docs/runbooks.md has no heading for #{anchor}")
    for key in ("summary", "description", "runbook_url"):
        if key not in annotations:
            errors.append(f"{name}: missing annotation {key}")
    return errors


def lint_metrics(alert: Alert) -> list[str]:
    errors = []
    expr = str(alert.get("expr", ""))
    try:
        names = metric_names(expr)
    except ValueError as exc:
        return [f"{alert.get('alert')}: {exc}"]
    unknown = names - CATALOG_NAMES - SCRAPE_SERIES
    if unknown:
        errors.append(f"{alert.get('alert')}: metrics not in the catalog: {sorted(unknown)}")
    # prometheus_client formats le as Python floats ("10.0"); a matcher on "10" matches nothing.
    for node in iter_nodes(parse(expr)):
        selector = node.expr
        if not isinstance(selector, promql_parser.VectorSelector) or selector.name is None:
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name != "le" or not selector.name.endswith("_bucket"):
                continue
            spec = metric_by_name(selector.name.removesuffix("_bucket"))
            allowed = {str(float(b)) for b in spec.buckets} | {"+Inf"}
            if matcher.value not in allowed:
                errors.append(f"{alert.get('alert')}: le={matcher.value!r} is not a bucket bound")
    return errors


def label_value_problems(expr: str) -> list[str]:
    """Literal label values an expression matches on that the code never emits (catalog)."""
    problems = []
    for node in iter_nodes(parse(expr)):
        selector = node.expr
        if not isinstance(selector, promql_parser.VectorSelector) or selector.name is None:
            continue
        spec = next((s for s in METRICS if selector.name in s.exposed_names), None)
        if spec is None:
            continue
        for m in selector.matchers.matchers:
            fixed = m.name in spec.labels and m.op == promql_parser.MatchOp.Equal
            if fixed and m.value not in spec.values_of(m.name):
                problems.append(f"{selector.name}{{{m.name}={m.value!r}}}")
    return problems


def test_alerts_match_only_label_values_the_code_emits() -> None:
    for alert in load_alerts():
        assert label_value_problems(alert["expr"]) == [], alert["alert"]
    assert label_value_problems('gateway_config_reloads_total{result="failed"}') != []


def test_alert_names_are_unique_and_required_ones_exist() -> None:
    names = [a["alert"] for a in load_alerts()]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS


@pytest.mark.parametrize("alert", load_alerts(), ids=lambda a: a["alert"])
def test_alert_follows_mixin_conventions(alert: Alert) -> None:
    assert lint_alert(alert, set(runbook_headings())) == []


@pytest.mark.parametrize("alert", load_alerts(), ids=lambda a: a["alert"])
def test_alert_reads_only_catalog_metrics(alert: Alert) -> None:
    assert lint_metrics(alert) == []


def test_every_rule_expression_reads_the_catalog() -> None:
    exprs = expressions_in_rules(RULES_FILE)
    assert len(exprs) == len(load_alerts())
    for expr in exprs:
        assert metric_names(expr), expr
        assert metric_names(expr) <= CATALOG_NAMES | SCRAPE_SERIES, expr


def scrape_selector_problems(expr: str) -> list[str]:
    """Selectors of Prometheus' own series must name the gateway's scrape job exactly."""
    problems = []
    for node in iter_nodes(parse(expr)):
        selector = node.expr
        if not isinstance(selector, promql_parser.VectorSelector):
            continue
        if selector.name not in SCRAPE_SERIES:
            continue
        jobs = [(m.op, m.value) for m in selector.matchers.matchers if m.name == "job"]
        if jobs != [(promql_parser.MatchOp.Equal, SCRAPE_JOB)]:
            problems.append(f"{selector.name} must select job={SCRAPE_JOB!r}: {expr!r}")
    return problems


def test_scrape_series_select_the_gateway_job() -> None:
    exprs = [a["expr"] for a in load_alerts()]
    assert any(metric_names(e) & SCRAPE_SERIES for e in exprs)
    for expr in exprs:
        assert scrape_selector_problems(expr) == []
    assert scrape_selector_problems("up == 0") != []
    assert scrape_selector_problems('up{job=~"routeiq.*"} == 0') != []


def raw_counter_reads(expr: str) -> list[str]:
    """Counter selectors not read through rate()/increase(): a raw count has no age."""
    counters = {s.name for s in METRICS if s.type == "counter"}
    counters |= {f"{s.name}_count" for s in METRICS if s.type == "histogram"}
    counters |= {f"{s.name}_bucket" for s in METRICS if s.type == "histogram"}
    raw = []
    for node in iter_nodes(parse(expr)):
        selector = node.expr
        if not isinstance(selector, promql_parser.VectorSelector) or selector.name not in counters:
            continue
        calls = [p for p in node.parents if isinstance(p, promql_parser.Call)]
        if not calls or calls[-1].func.name not in COUNTER_FUNCTIONS:
            raw.append(str(selector.name))
    return raw


def test_alerts_read_counters_only_through_rate_or_increase() -> None:
    # "x unless x offset 15m" fired for events older than the window: a counter's raw value
    # says how many events happened, not when.
    for alert in load_alerts():
        assert raw_counter_reads(alert["expr"]) == [], alert["alert"]
    old = (
        "sum by (job) (gateway_startup_failures_total unless "
        "gateway_startup_failures_total offset 15m) > 0"
    )
    assert raw_counter_reads(old) == ["gateway_startup_failures_total"] * 2


def test_runbook_names_exactly_the_components_the_code_emits() -> None:
    # tests/observability/test_metrics.py checks COMPONENTS against a real gateway.
    text = RUNBOOKS.read_text(encoding="utf-8")
    (paragraph,) = re.findall(r"^- \*\*Startup components\*\*.*?(?=^- |\Z)", text, re.M | re.S)
    assert re.findall(r"`([^`]+)`", paragraph) == list(COMPONENTS)
    # Wherever the runbooks point at a slow component, it is one the code emits.
    slow = re.findall(r"`([^`]+)`(?:, `[^`]+`)*(?: or `[^`]+`)? slow", text)
    assert slow and set(slow) <= set(COMPONENTS), slow
    for listed in re.findall(r"^- ((?:`[^`]+`(?:, | or )?)+) slow", text, re.M):
        assert set(re.findall(r"`([^`]+)`", listed)) <= set(COMPONENTS), listed


def test_runbook_heading_for_every_alert_is_the_alert_name() -> None:
    headings = runbook_headings()
    for alert in load_alerts():
        assert headings.get(alert["alert"].lower()) == alert["alert"]


def test_startup_slow_fires_from_one_scrape() -> None:
    # A single slow startup is scraped about once before it is history: no `for`, no rate().
    (alert,) = [a for a in load_alerts() if a["alert"] == "GatewayStartupSlow"]
    assert alert.get("for", "0s") in {"0s", "0m"}
    assert "gateway_last_startup_duration_seconds" in metric_names(alert["expr"])
    calls = {
        node.expr.func.name
        for node in iter_nodes(parse(alert["expr"]))
        if isinstance(node.expr, promql_parser.Call)
    }
    assert not calls & {"rate", "irate", "increase", "histogram_quantile"}


BREAKAGES: list[tuple[str, Callable[[Alert], None]]] = [
    ("name", lambda a: a.update(alert="gateway_startup_slow")),
    ("severity", lambda a: a["labels"].update(severity="page")),
    ("severity", lambda a: a.pop("labels")),
    ("summary", lambda a: a["annotations"].update(summary="Startup of {{ $labels.instance }}.")),
    ("summary", lambda a: a["annotations"].update(summary="Gateway startup was slow")),
    ("description", lambda a: a["annotations"].update(description="Startup was slow.")),
    ("runbook", lambda a: a["annotations"].update(runbook_url=RUNBOOK_BASE + "startup")),
    ("runbook", lambda a: a["annotations"].pop("runbook_url")),
    ("metrics", lambda a: a.update(expr="gateway_startup_seconds > 10")),
    ("metrics", lambda a: a.update(expr="process_start_time_seconds > 10")),
    (
        "metrics",
        lambda a: a.update(
            expr='sum by (job) (gateway_startup_duration_seconds_bucket{le="10"}) > 0'
        ),
    ),
]


@pytest.mark.parametrize(("what", "breakage"), BREAKAGES, ids=[w for w, _ in BREAKAGES])
def test_lint_catches_a_broken_alert(what: str, breakage: Callable[[Alert], None]) -> None:
    alert = copy.deepcopy(next(a for a in load_alerts() if a["alert"] == "GatewayStartupSlow"))
    anchors = set(runbook_headings())
    assert lint_alert(alert, anchors) == lint_metrics(alert) == []
    breakage(alert)
    assert lint_alert(alert, anchors) + lint_metrics(alert) != []


def test_runbook_anchor_must_exist() -> None:
    alert = copy.deepcopy(load_alerts()[0])
    assert lint_alert(alert, set()) != []


# --- unit tests of the rules ---------------------------------------------------------------


def test_rule_tests_load_the_rules_file() -> None:
    rule_files = load_rule_tests()["rule_files"]
    assert [(RULES_TEST_FILE.parent / f).resolve() for f in rule_files] == [RULES_FILE.resolve()]


def test_every_alert_has_firing_and_silent_cases() -> None:
    alerts = {a["alert"]: a for a in load_alerts()}
    firing: dict[str, list[dict[str, Any]]] = {name: [] for name in alerts}
    silent: dict[str, int] = dict.fromkeys(alerts, 0)
    for case in load_rule_tests()["tests"]:
        for check in case.get("alert_rule_test", []):
            name = check["alertname"]
            assert name in alerts, f"test for unknown alert {name}"
            expected = check.get("exp_alerts") or []
            if expected:
                firing[name] += expected
            else:
                silent[name] += 1
    for name, alert in alerts.items():
        assert firing[name], f"{name} has no test case where it fires"
        assert silent[name], f"{name} has no test case where it stays silent"
        for expected in firing[name]:
            # Exact expectations: every label and annotation the rule sets is checked.
            assert expected["exp_labels"]["severity"] == alert["labels"]["severity"]
            assert set(expected["exp_annotations"]) == set(alert["annotations"]), name
            assert expected["exp_annotations"]["summary"] == alert["annotations"]["summary"]
            assert expected["exp_annotations"]["runbook_url"] == alert["annotations"]["runbook_url"]
