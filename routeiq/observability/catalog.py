"""The metrics contract as data: every metric RouteIQ exports, with its type, labels and help.

``GatewayMetrics`` builds its collectors from this table, ``docs/metrics.md`` documents it and
the dashboard/alert contract tests read it, so a metric exists in exactly one place. This module
imports nothing from prometheus_client and has no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "LLM_LATENCY_BUCKETS",
    "METRICS",
    "STARTUP_BUCKETS",
    "MetricSpec",
    "metric_by_name",
]

MetricType = Literal["counter", "gauge", "histogram"]
# prometheus_client multiprocess modes for gauges (see prometheus_client.multiprocess).
GaugeMode = Literal[
    "all", "liveall", "livesum", "max", "livemax", "min", "livemin", "sum", "mostrecent"
]

# Startup takes ~3 s here; the alert threshold is 10 s, so buckets must reach well past it.
STARTUP_BUCKETS: tuple[float, ...] = (
    0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
COMPONENT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# LLM calls take from milliseconds (cached, mocked) to minutes (long generations).
LLM_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
TTFT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# A young collection takes microseconds; a full one over an unfrozen litellm heap ~260 ms.
GC_PAUSE_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    gauge_mode: GaugeMode = "all"

    @property
    def exposed_names(self) -> tuple[str, ...]:
        """Series names as they appear on ``/metrics`` (the text format of prometheus_client)."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


METRICS: tuple[MetricSpec, ...] = (
    # --- lifecycle -------------------------------------------------------------------------
    MetricSpec(
        "gateway_startup_duration_seconds",
        "histogram",
        "Time from the gateway's creation to entering the serving state.",
        buckets=STARTUP_BUCKETS,
    ),
    MetricSpec(
        "gateway_last_startup_duration_seconds",
        "gauge",
        "Duration of this worker's most recent successful startup.",
        gauge_mode="livemax",
    ),
    MetricSpec(
        "gateway_component_init_duration_seconds",
        "histogram",
        "Time each startup component took to initialise.",
        labels=("component",),
        buckets=COMPONENT_BUCKETS,
    ),
    MetricSpec(
        "gateway_lifecycle_state",
        "gauge",
        "1 for the lifecycle state this worker is in, 0 for the others.",
        labels=("state",),
        gauge_mode="liveall",
    ),
    MetricSpec(
        "gateway_lifecycle_transitions_total",
        "counter",
        "Lifecycle state transitions taken.",
        labels=("from_state", "to_state"),
    ),
    MetricSpec(
        "gateway_startup_failures_total",
        "counter",
        "Startups that ended in the failed state, by the phase that raised.",
        labels=("phase",),
    ),
    MetricSpec(
        "gateway_service_starts_total",
        "counter",
        "Background service starts under the supervisor (first starts and restarts).",
        labels=("service",),
    ),
    MetricSpec(
        "gateway_service_crashes_total",
        "counter",
        "Background services that exited with an error.",
        labels=("service",),
    ),
    MetricSpec(
        "gateway_service_restarts_total",
        "counter",
        "Background services restarted by the supervisor after a crash or exit.",
        labels=("service",),
    ),
    # --- leadership and config ------------------------------------------------------------
    MetricSpec(
        "leader_election_status",
        "gauge",
        "1 while this worker leads, else 0; summed across workers a value above 1 is split brain.",
        gauge_mode="livesum",
    ),
    MetricSpec(
        "leader_election_churn_total",
        "counter",
        "Times this worker gained or lost leadership.",
    ),
    MetricSpec(
        "gateway_config_reloads_total",
        "counter",
        "Config reload attempts by result (applied or rejected).",
        labels=("result",),
    ),
    MetricSpec(
        "gateway_config_revision",
        "gauge",
        "Revision of the config this worker serves.",
        gauge_mode="livemax",
    ),
    # --- traffic ---------------------------------------------------------------------------
    MetricSpec(
        "gateway_requests_total",
        "counter",
        "API requests by route, configured model (or 'other') and status class.",
        labels=("route", "model", "status_class"),
    ),
    MetricSpec(
        "gateway_request_duration_seconds",
        "histogram",
        "API request duration, from request received to last byte sent.",
        labels=("route",),
        buckets=LLM_LATENCY_BUCKETS,
    ),
    MetricSpec(
        "gateway_time_to_first_token_seconds",
        "histogram",
        "Time from request received to the first streamed content chunk.",
        buckets=TTFT_BUCKETS,
    ),
    MetricSpec(
        "gateway_tokens_total",
        "counter",
        "Tokens reported by upstream usage, by type (input or output).",
        labels=("type",),
    ),
    MetricSpec(
        "gateway_inflight_requests",
        "gauge",
        "API requests currently being served.",
        gauge_mode="livesum",
    ),
    MetricSpec(
        "gateway_requests_shed_total",
        "counter",
        "API requests refused with 503 and Retry-After because routeiq.limits.max_inflight "
        "requests were already in progress.",
        labels=("route",),
    ),
    MetricSpec(
        "gateway_routing_decisions_total",
        "counter",
        "Routing decisions by strategy and A/B arm ('none' outside an A/B split).",
        labels=("strategy", "arm"),
    ),
    # --- process group (routeiq serve --workers N) --------------------------------------------
    MetricSpec(
        "gateway_workers",
        "gauge",
        "Worker processes of the group by state (starting, serving, draining); set by the master.",
        labels=("state",),
        gauge_mode="livesum",
    ),
    MetricSpec(
        "gateway_worker_restarts_total",
        "counter",
        "Workers the master replaced after they died.",
    ),
    MetricSpec(
        "gateway_gc_pause_seconds",
        "histogram",
        "Garbage collector pauses by generation (0, 1, 2), in every worker.",
        labels=("generation",),
        buckets=GC_PAUSE_BUCKETS,
    ),
    # --- MCP gateway -----------------------------------------------------------------------
    MetricSpec(
        "gateway_mcp_tool_calls_total",
        "counter",
        "MCP tool calls through /mcp by server, tool and outcome (ok, tool_error, "
        "invalid_arguments, timeout, upstream_error, unavailable, unknown_tool).",
        labels=("server", "tool", "outcome"),
    ),
    MetricSpec(
        "gateway_mcp_tool_call_duration_seconds",
        "histogram",
        "Duration of MCP tool calls forwarded to a registered server.",
        labels=("server",),
        buckets=LLM_LATENCY_BUCKETS,
    ),
    MetricSpec(
        "gateway_mcp_server_up",
        "gauge",
        "1 while this worker holds a healthy session to the registered MCP server, else 0.",
        labels=("server",),
        gauge_mode="livemax",
    ),
)

_BY_NAME = {spec.name: spec for spec in METRICS}


def metric_by_name(name: str) -> MetricSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the RouteIQ metrics catalog") from None
