"""PromQL helpers for the dashboard and alert contract tests.

Expressions are parsed with the real PromQL parser (``promql_parser``), after Grafana's
variables are replaced by values the parser accepts. Helpers here read files and walk syntax
trees; they judge nothing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

__all__ = [
    "RANGE_VARIABLES",
    "SCRAPE_JOB",
    "SCRAPE_SERIES",
    "Node",
    "alert_rules",
    "expressions_in_dashboard",
    "expressions_in_rules",
    "find",
    "iter_nodes",
    "iter_panels",
    "label_values_selector",
    "metric_names",
    "parse",
    "promtool_path",
    "substitute_variables",
]

REPO = Path(__file__).resolve().parents[2]
PROMTOOL_FALLBACK = REPO / ".cache" / "tools" / "prom" / "usr" / "bin" / "promtool"

# Series Prometheus writes itself about each scrape target (not in the catalog), and the job
# that alert rules select them with (dashboards filter them with their $job variable).
SCRAPE_SERIES = frozenset({"up"})
SCRAPE_JOB = "routeiq"

# Grafana's built-in range variables; everything else is a label value.
RANGE_VARIABLES = frozenset({"__rate_interval", "__interval", "__range"})

# Variables whose "All" value also matches series without the label (the cluster label is
# added only by multi-cluster deployments, as in kubernetes-mixin).
MATCH_MISSING_LABEL = frozenset({"cluster"})

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>\w+)\s*\)\s*$")


def substitute_variables(
    expr: str, *, rate_interval: str = "5m", label_value: str | None = ".*"
) -> str:
    """Replace Grafana variables so that ``expr`` is plain PromQL.

    Range variables (``$__rate_interval``…) become ``rate_interval``; any other variable
    becomes ``label_value``, or is left as written when ``label_value`` is None.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in RANGE_VARIABLES:
            return rate_interval
        if label_value is None:
            return match.group(0)
        if name in MATCH_MISSING_LABEL and label_value in (".+", ".*"):
            return ".*"
        return label_value

    return _VARIABLE.sub(replace, expr)


def parse(expr: str, *, rate_interval: str = "5m", label_value: str | None = ".*") -> Any:
    """Parse a Grafana or Prometheus expression into a ``promql_parser.Expr``."""
    return promql_parser.parse(
        substitute_variables(expr, rate_interval=rate_interval, label_value=label_value)
    )


@dataclass(frozen=True, slots=True)
class Node:
    """A syntax tree node with its ancestors, outermost first."""

    expr: Any
    parents: tuple[Any, ...]


def iter_nodes(tree: Any) -> Iterator[Node]:
    """Every node of a parsed expression, depth first, with its ancestors."""
    stack: list[Any] = []
    nodes: list[Node] = []

    def pre(node: Any) -> None:
        nodes.append(Node(node, tuple(stack)))
        stack.append(node)

    def post(node: Any) -> None:
        stack.pop()

    promql_parser.walk(tree, pre, post)
    return iter(nodes)


def _selector_name(selector: Any) -> str | None:
    if selector.name:
        return str(selector.name)
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
            return str(matcher.value)
    return None


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (``foo_bucket``, not ``foo``).

    Grafana variables are substituted first. A selector without a fixed name (a regex on
    ``__name__``) raises ``ValueError``: the contract cannot be checked for it.
    """
    names: set[str] = set()
    for node in iter_nodes(parse(expr)):
        if isinstance(node.expr, promql_parser.VectorSelector):
            name = _selector_name(node.expr)
            if name is None:
                raise ValueError(f"selector without a fixed metric name in {expr!r}")
            names.add(name)
    return names


def label_values_selector(query: str) -> str | None:
    """The series selector of a Grafana ``label_values(selector, label)`` variable query."""
    match = _LABEL_VALUES.match(query)
    return match.group("selector") if match else None


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, including panels nested in rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    if isinstance(query, dict):
        query = query.get("query", "")
    return str(query)


def expressions_in_dashboard(d: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard, as written (with Grafana variables).

    Panel targets first, then the series selectors of ``label_values`` variable queries.
    """
    exprs = [
        target["expr"]
        for panel in iter_panels(d)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in d.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            selector = label_values_selector(_variable_query(variable))
            if selector is not None:
                exprs.append(selector)
    return exprs


def _rules(path: Path | str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    for group in document["groups"]:
        yield from group["rules"]


def expressions_in_rules(path: Path | str) -> list[str]:
    """The ``expr`` of every alerting and recording rule in a Prometheus rule file."""
    return [str(rule["expr"]) for rule in _rules(path)]


def alert_rules(path: Path | str) -> list[dict[str, Any]]:
    """The alerting rules (not recording rules) of a Prometheus rule file."""
    return [rule for rule in _rules(path) if "alert" in rule]


def find(tree: Any, predicate: Callable[[Node], bool]) -> list[Node]:
    """The nodes of a parsed expression for which ``predicate`` is true."""
    return [node for node in iter_nodes(tree) if predicate(node)]


def promtool_path() -> str | None:
    """promtool from PATH, else the copy ``scripts/test`` installs under ``.cache/tools``."""
    found = shutil.which("promtool")
    if found:
        return found
    return str(PROMTOOL_FALLBACK) if PROMTOOL_FALLBACK.is_file() else None
