"""``docs/metrics.md`` documents exactly the metrics catalog, and names the dashboard panels and
alerts that read each metric."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from routeiq.observability.catalog import METRICS, MetricSpec

from .promql import (
    SCRAPE_SERIES,
    alert_rules,
    expressions_in_dashboard,
    iter_panels,
    metric_names,
)

REPO = Path(__file__).resolve().parents[2]
METRICS_DOC = REPO / "docs" / "metrics.md"
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
RULES_FILE = REPO / "alerts" / "routeiq.rules.yaml"
COLUMNS = ["Metric", "Type", "Labels and their values", "Multiprocess mode", "Meaning", "Used by"]
NONE = "—"


@dataclass(frozen=True)
class Row:
    name: str
    type: str
    labels: tuple[str, ...]
    mode: str
    meaning: str
    used_by: str
    values: dict[str, tuple[str, ...]]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _labels(cell: str) -> tuple[str, ...]:
    if cell == NONE:
        return ()
    labels: list[str] = []
    for part in cell.split("<br>"):
        names, _, _ = part.partition(":")
        labels += re.findall(r"`(\w+)`", names)
    return tuple(labels)


def _values(cell: str) -> dict[str, tuple[str, ...]]:
    """``label → values`` of a labels cell: the backquoted words after each label's colon."""
    if cell == NONE:
        return {}
    found: dict[str, tuple[str, ...]] = {}
    for part in cell.split("<br>"):
        names, _, values = part.partition(":")
        for label in re.findall(r"`(\w+)`", names):
            found[label] = tuple(re.findall(r"`([^`]+)`", values))
    return found


def parse_table(text: str) -> list[Row]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines, "docs/metrics.md has no table"
    assert _cells(lines[0]) == COLUMNS
    rows = []
    for line in lines[2:]:
        cells = _cells(line)
        assert len(cells) == len(COLUMNS), line
        name = re.fullmatch(r"`(\w+)`", cells[0])
        assert name, f"metric cell {cells[0]!r} is not a `name`"
        rows.append(
            Row(
                name[1],
                cells[1],
                _labels(cells[2]),
                cells[3],
                cells[4],
                cells[5],
                _values(cells[2]),
            )
        )
    return rows


def doc_rows() -> dict[str, Row]:
    rows = parse_table(METRICS_DOC.read_text(encoding="utf-8"))
    names = [r.name for r in rows]
    assert len(names) == len(set(names)), "a metric is documented twice"
    return {r.name: r for r in rows}


def base_name(series: str) -> str:
    """The catalog name of an exposed series name (``foo_bucket`` → ``foo``)."""
    for spec in METRICS:
        if series in spec.exposed_names:
            return spec.name
    raise KeyError(series)


def usage() -> dict[str, tuple[set[str], set[str]]]:
    """For each catalog metric: the titles of the panels and the names of the alerts using it."""
    used: dict[str, tuple[set[str], set[str]]] = {s.name: (set(), set()) for s in METRICS}
    for path in DASHBOARDS:
        for panel in iter_panels(json.loads(path.read_text(encoding="utf-8"))):
            for target in panel.get("targets", []):
                for series in metric_names(target["expr"]) - SCRAPE_SERIES:
                    used[base_name(series)][0].add(panel["title"])
    for alert in alert_rules(RULES_FILE):
        for series in metric_names(alert["expr"]) - SCRAPE_SERIES:
            used[base_name(series)][1].add(alert["alert"])
    return used


def test_every_catalog_metric_is_documented_and_nothing_else() -> None:
    assert set(doc_rows()) == {s.name for s in METRICS}


def test_every_metric_name_in_the_doc_is_in_the_catalog() -> None:
    # Anything that looks like a RouteIQ series name, anywhere on the page.
    text = METRICS_DOC.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"\b(?:gateway|leader_election)_\w+", text))
    exposed = {n for s in METRICS for n in (s.name, *s.exposed_names)}
    assert mentioned - exposed == set()


@pytest.mark.parametrize("spec", METRICS, ids=lambda s: s.name)
def test_row_matches_the_catalog(spec: MetricSpec) -> None:
    row = doc_rows()[spec.name]
    assert row.type == spec.type
    assert row.labels == spec.labels
    if spec.type == "gauge":
        assert re.match(rf"`{spec.gauge_mode}`", row.mode), row.mode
    else:
        assert row.mode == NONE
    assert row.meaning


@pytest.mark.parametrize("spec", [s for s in METRICS if s.label_values], ids=lambda s: s.name)
def test_label_values_are_the_ones_the_catalog_lists(spec: MetricSpec) -> None:
    # The catalog's label_values are checked against a real gateway in test_metrics.py.
    row = doc_rows()[spec.name]
    for label, values in spec.label_values:
        assert set(row.values[label]) == set(values), label


@pytest.mark.parametrize("spec", METRICS, ids=lambda s: s.name)
def test_used_by_names_exactly_the_panels_and_alerts(spec: MetricSpec) -> None:
    panels, alerts = usage()[spec.name]
    row = doc_rows()[spec.name]
    assert set(re.findall(r'"([^"]+)"', row.used_by)) == panels
    assert set(re.findall(r"`([A-Z]\w+)`", row.used_by)) == alerts
    assert panels or alerts, f"{spec.name} is used by no dashboard panel and no alert"


def test_every_metric_used_by_dashboards_and_alerts_is_documented() -> None:
    documented = doc_rows()
    exprs = [e for p in DASHBOARDS for e in expressions_in_dashboard(json.loads(p.read_text()))]
    exprs += [a["expr"] for a in alert_rules(RULES_FILE)]
    assert exprs
    for expr in exprs:
        for series in metric_names(expr) - SCRAPE_SERIES:
            assert base_name(series) in documented, expr


def test_parser_reads_labels_and_rejects_a_bad_table() -> None:
    assert _labels("`from_state`, `to_state`: the states") == ("from_state", "to_state")
    assert _labels("`route`: `/v1/models`<br>`model`: `other`") == ("route", "model")
    assert _labels("`component`: `config`, `hook:<name>`") == ("component",)
    assert _values("`a`: `x`, `<name>` (a name)<br>`b`: `y`") == {"a": ("x", "<name>"), "b": ("y",)}
    with pytest.raises(AssertionError):
        parse_table("| Metric | Type |\n|---|---|\n| `x` | gauge |\n")
