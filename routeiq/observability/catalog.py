"""The metrics contract as data: every metric RouteIQ exports, with its type, labels and help.

``GatewayMetrics`` builds its collectors from this table, ``docs/metrics.md`` documents it and
the dashboard/alert contract tests read it, so a metric exists in exactly one place. This module
imports nothing from prometheus_client and has no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "API_ROUTES",
    "COMPONENTS",
    "LIFECYCLE_STATES",
    "LLM_LATENCY_BUCKETS",
    "METRICS",
    "SERVICES",
    "STARTUP_BUCKETS",
    "STARTUP_FAILURE_PHASES",
    "MetricSpec",
    "metric_by_name",
]

MetricType = Literal["counter", "gauge", "histogram"]
# prometheus_client multiprocess modes for gauges (see prometheus_client.multiprocess).
GaugeMode = Literal[
    "all", "liveall", "livesum", "max", "livemax", "min", "livemin", "sum", "mostrecent"
]

# One `routeiq serve` process starts in ~3 s here, a 3-worker hypercorn group on 2 cores in
# 10-15 s (every worker imports litellm); the alert threshold is 30 s, so buckets reach past it.
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


# Label values the code emits. ``<name>`` stands for a name the config declares. The contract
# tests check these against what a real gateway emits, against docs/metrics.md, docs/runbooks.md
# and the label matchers of the dashboards and alerts.
LIFECYCLE_STATES: tuple[str, ...] = (
    "created", "configured", "observing", "patched", "serving", "draining", "stopped", "failed",
)  # fmt: skip
API_ROUTES: tuple[str, ...] = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
)  # fmt: skip
# The phase a failed startup was in: the four startup phases, or "supervisor" when a service
# exceeded its restart intensity before the gateway was serving.
STARTUP_FAILURE_PHASES: tuple[str, ...] = ("configure", "observe", "patch", "serve", "supervisor")
# Startup components in the order a gateway initialises them (routeiq/assembly/gateway.py);
# event_sink only with an event log path, http_client only with the passthrough fast path,
# the mcp_* ones unless routeiq.mcp.enabled is false.
COMPONENTS: tuple[str, ...] = (
    "config", "event_sink", "metrics", "logging", "tracing", "litellm", "router", "http_client",
    "mcp_registry", "mcp-endpoint", "mcp-registry", "service:<name>", "config-sync",
    "leadership", "hook:<name>",
)  # fmt: skip

# Supervised services: RouteIQ's own, and those declared under routeiq.services.
# mcp:<server> is the session to a registered MCP server.
SERVICES: tuple[str, ...] = (
    "mcp-endpoint", "mcp-registry", "mcp:<server>", "config-sync", "leadership", "<name>",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric. ``label_values`` lists, per label, the values the code emits.

    A counter whose labels all have a closed set of values (no ``<name>`` placeholder) is
    created at 0 for every combination when the gateway starts, so that ``increase()`` sees
    its first event.
    """

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    gauge_mode: GaugeMode = "all"
    label_values: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def values_of(self, label: str) -> tuple[str, ...]:
        """The documented values of ``label`` (empty when the set is open or undocumented)."""
        return dict(self.label_values).get(label, ())

    @property
    def closed_label_sets(self) -> tuple[tuple[str, ...], ...] | None:
        """Every label's values when all are fixed (no placeholders), else None."""
        if not self.labels:
            return None
        sets = tuple(self.values_of(label) for label in self.labels)
        if any(not values or any("<" in v for v in values) for values in sets):
            return None
        return sets

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
        label_values=(("component", COMPONENTS),),
    ),
    MetricSpec(
        # livesum, not liveall: liveall adds a pid label, a new series per worker start.
        "gateway_lifecycle_state",
        "gauge",
        "Live workers in each lifecycle state (1 or 0 for a single process).",
        labels=("state",),
        gauge_mode="livesum",
        label_values=(("state", LIFECYCLE_STATES),),
    ),
    MetricSpec(
        # Our process_start_time_seconds: prometheus_client's process collector is missing in
        # multiprocess mode, and this one covers the process group. A change is a restart.
        "gateway_start_time_seconds",
        "gauge",
        "Unix time at which the newest live worker's gateway was created.",
        gauge_mode="livemax",
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
        label_values=(("phase", STARTUP_FAILURE_PHASES),),
    ),
    MetricSpec(
        "gateway_service_starts_total",
        "counter",
        "Background service starts under the supervisor (first starts and restarts).",
        labels=("service",),
        label_values=(("service", SERVICES),),
    ),
    MetricSpec(
        "gateway_service_crashes_total",
        "counter",
        "Background services that exited with an error.",
        labels=("service",),
        label_values=(("service", SERVICES),),
    ),
    MetricSpec(
        "gateway_service_restarts_total",
        "counter",
        "Background services restarted by the supervisor after a crash or exit.",
        labels=("service",),
        label_values=(("service", SERVICES),),
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
        label_values=(("result", ("applied", "rejected")),),
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
        label_values=(
            ("route", API_ROUTES),
            ("model", ("<name>", "other")),
            ("status_class", ("2xx", "3xx", "4xx", "5xx")),
        ),
    ),
    MetricSpec(
        "gateway_request_duration_seconds",
        "histogram",
        "API request duration, from request received to last byte sent.",
        labels=("route",),
        buckets=LLM_LATENCY_BUCKETS,
        label_values=(("route", API_ROUTES),),
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
        label_values=(("type", ("input", "output")),),
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
        # Closed set: created at 0 at startup, so GatewayLoadShedding sees the first shed.
        label_values=(("route", API_ROUTES),),
    ),
    MetricSpec(
        "gateway_routing_decisions_total",
        "counter",
        "Routing decisions by strategy and A/B arm ('none' outside an A/B split).",
        labels=("strategy", "arm"),
        label_values=(("strategy", ("<name>", "none")), ("arm", ("<name>", "none"))),
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
