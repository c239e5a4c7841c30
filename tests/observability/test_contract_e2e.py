"""The metrics contract end to end: real gateways, scraped by a real Prometheus.

(a) Every metric that a dashboard or alert expression names is on a running gateway's
``/metrics`` after startup and some requests. (b) With Prometheus scraping it, every dashboard
query returns data. The alerts themselves are exercised end to end, fault by fault, in
``test_alerts_e2e.py``.

A metric that cannot appear in this setup is listed in ``EXPECTED_ABSENT`` with the reason, and
the tests fail if it does appear, so the list cannot go stale silently.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from routeiq.config.loader import embedded_default
from tests.support.procs import BIN, REPO, GatewayProcess, free_port, gateway_env
from tests.support.prometheus import PrometheusServer, prometheus_path

from .promql import (
    SCRAPE_SERIES,
    expressions_in_dashboard,
    expressions_in_rules,
    iter_panels,
    label_values_selector,
    metric_names,
    substitute_variables,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RULES = REPO / "alerts" / "routeiq.rules.yaml"
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))

# Series names (as exposed) that no gateway of this setup can export, and why. (Event counters
# are created at 0 before their first event.)
EXPECTED_ABSENT: dict[str, str] = {
    "gateway_workers": (
        "written by the master of `routeiq serve --workers N` only; this setup runs single "
        "processes (tests/master reads it from a real process group)"
    ),
    # Labelled by MCP server: this stack registers none (tests/mcp exports them against real
    # MCP servers and checks their values; promtool tests cover the alert).
    "gateway_mcp_tool_calls_total": "labelled by MCP server; no MCP server in this stack",
    "gateway_mcp_tool_call_duration_seconds_bucket": "labelled by MCP server; none here",
    "gateway_mcp_server_up": "labelled by MCP server; no MCP server in this stack",
}
# Dashboard queries that fail because of a known gateway bug; each must start passing once the
# bug is fixed (strict xfail).
KNOWN_BUGS: dict[str, str] = {}

CHAT = {"messages": [{"role": "user", "content": "hello"}]}
ADMIN_KEY = "admin-key-for-tests"


def contract_expressions() -> list[str]:
    exprs = [expr for path in DASHBOARDS for expr in expressions_in_dashboard(load(path))]
    return exprs + expressions_in_rules(RULES)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def dashboard_queries() -> list[Any]:
    """One pytest param per panel target and per ``label_values`` variable of each dashboard."""
    params = []
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in iter_panels(dashboard):
            for index, target in enumerate(panel.get("targets", [])):
                if target.get("expr"):
                    name = f"{path.stem}:{panel.get('title')}:{target.get('refId', index)}"
                    params.append(query_param(name, target["expr"]))
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query", "")
            query = query.get("query", "") if isinstance(query, dict) else str(query)
            selector = label_values_selector(query)
            if variable.get("type") == "query" and selector is not None:
                params.append(query_param(f"{path.stem}:${variable['name']}", selector))
    return params


def query_param(name: str, expr: str) -> Any:
    marks = [
        pytest.mark.xfail(strict=True, reason=reason)
        for needle, reason in KNOWN_BUGS.items()
        if needle in expr
    ]
    return pytest.param(expr, id=name, marks=marks)


def exported_names(text: str) -> set[str]:
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


# --- the running stack -------------------------------------------------------------------------


@dataclass
class Stack:
    normal: GatewayProcess
    prometheus: PrometheusServer
    metrics_text: str

    def instance(self, gateway: GatewayProcess) -> str:
        return f"127.0.0.1:{gateway.port}"

    def wait_scrapes(self, count: int, timeout: float = 30.0) -> None:
        """Wait until Prometheus holds ``count`` successful scrapes of the normal gateway."""
        expr = f'sum_over_time(up{{instance="{self.instance(self.normal)}"}}[5m])'

        def scraped() -> bool:
            result = self.prometheus.query(expr)
            return bool(result) and float(result[0]["value"][1]) >= count

        self.prometheus.wait_for(scraped, timeout=timeout, what=f"{count} scrapes")


def write_config(path: Path, **routeiq: Any) -> Path:
    config = embedded_default()
    config["routeiq"] = {"drain": {"delay_s": 0}, **routeiq}
    config["model_list"].append(
        {
            # Nothing listens on a port just found free: every call is an upstream failure.
            "model_name": "down",
            "litellm_params": {
                "model": "openai/down",
                "api_key": "sk-down-0000",
                "api_base": f"http://127.0.0.1:{free_port()}/v1",
            },
        }
    )
    config["litellm_settings"] = {"num_retries": 0, "request_timeout": 5}
    config["router_settings"] = {"num_retries": 0}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def serve_process(
    directory: Path, config: Path, env: dict[str, str] | None = None
) -> GatewayProcess:
    """``routeiq serve`` as ``tests.support.procs.start_gateway`` starts it (module-scoped)."""
    port = free_port()
    args = [str(BIN / "routeiq"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    environment = gateway_env({"ROUTEIQ_CONFIG": str(config), **(env or {})})
    return GatewayProcess(args, port, environment, directory / f"gateway-{port}.log")


def reload_config(url: str, config: Path) -> None:
    """One applied reload (a reloadable change) and one rejected (a restart-only change)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    data["routeiq"]["limits"] = {"max_body_bytes": 1_000_000}
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    # The file watcher may see the change first: then this reload finds it unchanged.
    applied = httpx.post(f"{url}/_admin/reload", headers=headers, timeout=30)
    assert applied.status_code == 200 and applied.json()["result"] in ("applied", "unchanged")
    data["routeiq"]["drain"] = {"delay_s": 0.5}
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    rejected = httpx.post(f"{url}/_admin/reload", headers=headers, timeout=30)
    assert rejected.status_code == 422, rejected.text


def send_traffic(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(3):
            ok = client.post("/v1/chat/completions", json={"model": "routeiq-mock", **CHAT})
            assert ok.status_code == 200, ok.text
        stream = {"model": "routeiq-mock", "stream": True, **CHAT}
        stream["stream_options"] = {"include_usage": True}
        with client.stream("POST", "/v1/chat/completions", json=stream) as response:
            assert response.status_code == 200
            assert "[DONE]" in response.read().decode()
        unknown = client.post("/v1/chat/completions", json={"model": "no-such-model", **CHAT})
        assert unknown.status_code == 404
        bad = client.post("/v1/chat/completions", json={"model": "routeiq-mock", "messages": 1})
        assert bad.status_code == 400
        down = client.post("/v1/chat/completions", json={"model": "down", **CHAT})
        assert down.status_code >= 500
        assert client.get("/v1/models").status_code == 200


def shed_one_request(gateway: GatewayProcess) -> None:
    """With ``max_inflight: 1``, hold one request open (headers sent, body awaited) and send
    another: it is shed (503, ``gateway_requests_shed_total``)."""
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        "content-type: application/json\r\ncontent-length: 100\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as held:
        held.sendall(head.encode())
        deadline = time.monotonic() + 30
        while True:  # until the held request is in flight
            answer = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "routeiq-mock", **CHAT},
                timeout=30,
            )
            if answer.status_code == 503:
                assert answer.headers["retry-after"], answer.headers
                return
            assert time.monotonic() < deadline, "the held request never counted as in flight"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = prometheus_path()
    if binary is None:
        pytest.fail(
            "prometheus not found on PATH nor at .cache/tools/prom/usr/bin/prometheus; "
            "run scripts/setup dev, which installs it"
        )
    tmp = tmp_path_factory.mktemp("contract")
    normal_config = tmp / "normal.yaml"
    normal = serve_process(
        tmp,
        write_config(
            normal_config,
            admin_key=ADMIN_KEY,
            limits={"max_inflight": 1},  # shed_one_request; the reload lifts it
            # A service that crashes once, then waits a minute to restart: the service metrics.
            supervisor={"max_restarts": 100, "backoff_initial_s": 60, "backoff_max_s": 60},
            services=[
                {
                    "name": "flaky",
                    "call": "tests.support.hooks:crashing_service",
                    "restart": "transient",
                }
            ],
        ),
    )
    prometheus = PrometheusServer(binary, tmp / "prometheus", [f"127.0.0.1:{normal.port}"], [RULES])
    started: list[GatewayProcess] = []
    try:
        prometheus.start().wait_ready()
        started.append(normal.start())
        normal.wait_ready(timeout=180)
        send_traffic(normal.url)
        shed_one_request(normal)
        reload_config(normal.url, normal_config)
        result = Stack(normal, prometheus, "")
        result.wait_scrapes(1)
        send_traffic(normal.url)
        result.metrics_text = httpx.get(f"{normal.url}/metrics", timeout=10).text
        yield result
    finally:
        for gateway in started:
            gateway.signal()
        for gateway in started:
            gateway.stop()
        prometheus.stop()


# --- (a) every metric the dashboards and alerts name is exported --------------------------------


def test_every_metric_named_by_dashboards_and_alerts_is_exported(stack: Stack) -> None:
    named = set().union(*(metric_names(expr) for expr in contract_expressions())) - SCRAPE_SERIES
    assert set(EXPECTED_ABSENT) <= named, "EXPECTED_ABSENT lists metrics nothing uses"
    exported = exported_names(stack.metrics_text)
    missing = sorted(named - exported - set(EXPECTED_ABSENT))
    assert not missing, f"named by dashboards/alerts but not exported: {missing}"
    unexpectedly_present = sorted(set(EXPECTED_ABSENT) & exported)
    assert not unexpectedly_present, (
        f"exported although EXPECTED_ABSENT says they cannot be; update the list: "
        f"{unexpectedly_present}"
    )


# --- (b) every dashboard query returns data from a real Prometheus --------------------------------


@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_query_returns_data(stack: Stack, expr: str) -> None:
    # rate() and increase() over 1m need two samples; a few scrapes leave no doubt.
    stack.wait_scrapes(3)
    # Event bars compare with the previous bar ($__interval ago): the stack is seconds old.
    promql = substitute_variables(
        expr.replace("$__interval", "2s"), rate_interval="1m", label_value=".+"
    )
    absent = sorted(metric_names(expr) & set(EXPECTED_ABSENT))
    if absent:
        assert stack.prometheus.query(promql) == [], (
            f"returned data although {absent} are in EXPECTED_ABSENT"
        )
        return
    result = stack.prometheus.wait_for(
        lambda: stack.prometheus.query(promql), timeout=3, what=f"data for {promql}"
    )
    assert result
