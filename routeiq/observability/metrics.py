"""Prometheus metrics for one app instance, and the projection that feeds them from events.

Collectors live in a ``CollectorRegistry`` owned by the app instance, never in
prometheus_client's global default registry. prometheus_client is imported only when an
instance is built (its import reads ``PROMETHEUS_MULTIPROC_DIR`` and registers global
collectors), i.e. in the ``observing`` phase.

In multiprocess mode (several hypercorn workers) every worker writes its values to files in a
shared directory; ``render()`` then aggregates the whole process group, counters summed and
gauges by the mode declared in the catalog. No gauge uses a per-pid mode (``all``/``liveall``):
those add a ``pid`` label, a new series per worker start.

``*_created`` series are disabled (``prometheus_client.disable_created_metrics``): they double
every counter and histogram family on ``/metrics`` for a value the dashboards and alerts never
read, and multiprocess mode does not export them at all, so a single process and a process group
expose the same families. The switch is process-wide in prometheus_client; it is flipped where
the registry is built, before any collector is created.

Counters whose labels all have a closed set of values in the catalog are created at 0 for every
combination when the projection is built, and a service's counters when it first starts: a
series that exists before its first event lets ``increase()`` count that event.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from routeiq.lifecycle.events import Event, EventKind
from routeiq.observability.catalog import METRICS, MetricSpec, metric_by_name

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "GatewayMetrics",
    "LifecycleMetricsProjection",
    "ProcessGroupMetrics",
    "fresh_multiprocess_dir",
    "mark_worker_dead",
    "prepare_multiprocess_dir",
    "render_process_group",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

C = TypeVar("C", "Counter", "Gauge", "Histogram")


def prepare_multiprocess_dir(directory: Path) -> int:
    """Create ``directory`` and remove the live-gauge files of workers that are gone.

    Returns how many dead workers were cleaned. Counter and histogram files of dead workers
    stay: their counts are part of the group's totals.
    """
    from prometheus_client import multiprocess

    directory.mkdir(parents=True, exist_ok=True)
    dead: set[int] = set()
    for path in directory.glob("gauge_live*.db"):
        pid_text = path.stem.rsplit("_", 1)[-1]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            dead.add(int(pid_text))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    return len(dead)


def fresh_multiprocess_dir(directory: Path) -> None:
    """Create ``directory`` empty of metric files: a master owns it for its group's lifetime."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)


def mark_worker_dead(directory: Path, pid: int) -> None:
    """Remove a reaped worker's live-gauge files; its counters stay in the group's totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def _write_values_to(directory: Path) -> None:
    """Make prometheus_client keep values in files in ``directory`` (multiprocess mode).

    prometheus_client picks in-memory or file-backed values from ``PROMETHEUS_MULTIPROC_DIR``
    when first imported; a directory given through RouteIQ's config must take effect even if it
    was imported before. This is process-wide, as multiprocess mode itself is.
    """
    os.environ[MULTIPROC_ENV] = str(directory)
    from prometheus_client import values

    if getattr(values.ValueClass, "__name__", "") != "MmapedValue":
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GatewayMetrics:
    """Every collector of the catalog, registered in this instance's own registry.

    Each collector is an attribute named exactly as the metric (the catalog's name), typed
    ``Counter``, ``Gauge`` or ``Histogram``: a misspelt metric is a type error, not a KeyError
    at run time. ``tests/observability/test_metrics.py`` checks the attributes against the
    catalog.
    """

    # --- lifecycle
    gateway_startup_duration_seconds: Histogram
    gateway_last_startup_duration_seconds: Gauge
    gateway_component_init_duration_seconds: Histogram
    gateway_lifecycle_state: Gauge
    gateway_start_time_seconds: Gauge
    gateway_lifecycle_transitions_total: Counter
    gateway_startup_failures_total: Counter
    gateway_service_starts_total: Counter
    gateway_service_crashes_total: Counter
    gateway_service_restarts_total: Counter
    # --- leadership and config
    leader_election_status: Gauge
    leader_election_churn_total: Counter
    gateway_config_reloads_total: Counter
    gateway_config_revision: Gauge
    # --- traffic
    gateway_requests_total: Counter
    gateway_request_duration_seconds: Histogram
    gateway_time_to_first_token_seconds: Histogram
    gateway_tokens_total: Counter
    gateway_inflight_requests: Gauge
    gateway_requests_shed_total: Counter
    gateway_routing_decisions_total: Counter
    # --- process group (written by the master; registered here so every worker exposes them)
    gateway_workers: Gauge
    gateway_worker_restarts_total: Counter
    gateway_gc_pause_seconds: Histogram
    # --- MCP gateway
    gateway_mcp_tool_calls_total: Counter
    gateway_mcp_tool_call_duration_seconds: Histogram
    gateway_mcp_server_up: Gauge

    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir is not None:
            _write_values_to(multiprocess_dir)
        from prometheus_client import CollectorRegistry, disable_created_metrics

        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess_dir = multiprocess_dir
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        for spec in METRICS:
            setattr(self, spec.name, _collector(spec, self.registry))
        self._children: dict[tuple[object, ...], Counter | Gauge | Histogram] = {}

    def child(self, collector: C, *values: str) -> C:
        """``collector.labels(*values)`` (values in the catalog's label order), made once.

        The request path labels five series per request; a lookup here costs a third of
        ``labels``. A child stays valid for the collector's lifetime: no series is removed.
        """
        key = (collector, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = collector.labels(*values)
        return child  # type: ignore[return-value]

    @property
    def specs(self) -> tuple[MetricSpec, ...]:
        return METRICS

    def collector(self, spec: MetricSpec) -> Counter | Gauge | Histogram:
        """The collector of a catalog entry, for code that walks the catalog."""
        collector: Counter | Gauge | Histogram = getattr(self, spec.name)
        return collector

    def render(self) -> tuple[bytes, str]:
        """The exposition text of this worker, or of the process group in multiprocess mode."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        return render_process_group(self.multiprocess_dir)


class ProcessGroupMetrics:
    """The master's own collectors: ``gateway_workers{state}`` and worker restarts.

    The master writes them into the group's multiprocess directory, so ``/metrics`` on any
    worker shows them. Built only after the first workers are forked: creating a value opens
    its file.
    """

    STATES = ("starting", "serving", "draining")

    def __init__(self, directory: Path) -> None:
        _write_values_to(directory)
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        workers = _collector(metric_by_name("gateway_workers"), self.registry)
        restarts = _collector(metric_by_name("gateway_worker_restarts_total"), self.registry)
        if not isinstance(workers, Gauge) or not isinstance(restarts, Counter):
            raise TypeError("the catalog's process-group metrics changed type")
        self._workers, self._restarts = workers, restarts

    def set_workers(self, counts: Mapping[str, int]) -> None:
        for state in self.STATES:
            self._workers.labels(state=state).set(counts.get(state, 0))

    def worker_restarted(self) -> None:
        self._restarts.inc()


def _collector(spec: MetricSpec, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    from prometheus_client import Counter, Gauge, Histogram

    if spec.type == "counter":
        # prometheus_client adds the _total suffix itself.
        return Counter(spec.name.removesuffix("_total"), spec.help, spec.labels, registry=registry)
    if spec.type == "gauge":
        return Gauge(
            spec.name,
            spec.help,
            spec.labels,
            registry=registry,
            multiprocess_mode=spec.gauge_mode,
        )
    return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets)


def render_process_group(directory: Path) -> tuple[bytes, str]:
    """The exposition text aggregated from every worker's files in ``directory``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    group = CollectorRegistry()
    MultiProcessCollector(group, path=str(directory))  # type: ignore[no-untyped-call]
    return generate_latest(group), CONTENT_TYPE_LATEST


class LifecycleMetricsProjection:
    """Turns lifecycle events into the lifecycle metrics; subscribe it with replay."""

    def __init__(self, metrics: GatewayMetrics, states: tuple[str, ...]) -> None:
        self._m = metrics
        self._states = states
        self._origin: float | None = None
        self._phase: str = "configure"
        for state in states:
            metrics.gateway_lifecycle_state.labels(state=state).set(0)
        metrics.leader_election_status.set(0)
        for spec in metrics.specs:
            sets = spec.closed_label_sets
            if spec.type == "counter" and sets is not None:
                for values in itertools.product(*sets):
                    metrics.collector(spec).labels(*values)

    def __call__(self, event: Event) -> None:
        if self._origin is None:
            self._origin = event.mono_time
            self._m.gateway_start_time_seconds.set(event.wall_time)
        if event.kind == EventKind.TRANSITION:
            self._transition(event)
        elif event.kind == EventKind.COMPONENT and event.ok and event.duration_s is not None:
            self._m.gateway_component_init_duration_seconds.labels(
                component=event.component or "unknown"
            ).observe(event.duration_s)
        elif event.kind == EventKind.SERVICE and event.component:
            self._service(event.component, event.trigger or "", event.attributes)
        elif event.kind == EventKind.LEADERSHIP:
            self._m.leader_election_status.set(1 if event.to_state == "leader" else 0)
            if event.trigger in ("elected", "lose", "resign"):
                self._m.leader_election_churn_total.inc()
        elif event.kind == EventKind.CONFIG:
            self._config(event)

    def _transition(self, event: Event) -> None:
        m = self._m
        from_state, to_state = event.from_state or "", event.to_state or ""
        m.gateway_lifecycle_transitions_total.labels(from_state=from_state, to_state=to_state).inc()
        for state in self._states:
            m.gateway_lifecycle_state.labels(state=state).set(1 if state == to_state else 0)
        if to_state == "serving" and self._origin is not None:
            duration = event.mono_time - self._origin
            m.gateway_startup_duration_seconds.observe(duration)
            m.gateway_last_startup_duration_seconds.set(duration)
        elif to_state == "failed" and from_state != "serving" and from_state != "draining":
            phase = str(event.attributes.get("phase") or self._phase)
            m.gateway_startup_failures_total.labels(phase=phase).inc()
        self._phase = {"configured": "observe", "observing": "patch", "patched": "serve"}.get(
            to_state, self._phase
        )

    def _config(self, event: Event) -> None:
        revision = event.attributes.get("revision")
        if event.trigger in ("loaded", "applied") and isinstance(revision, (int, float)):
            self._m.gateway_config_revision.set(revision)
        if event.trigger in ("applied", "rejected"):
            self._m.gateway_config_reloads_total.labels(result=event.trigger).inc()

    def _service(self, service: str, what: str, _attributes: Mapping[str, object]) -> None:
        m = self._m
        if what == "started":
            m.gateway_service_starts_total.labels(service=service).inc()
            # Created at 0 so that increase() sees the first crash and restart.
            m.gateway_service_crashes_total.labels(service=service)
            m.gateway_service_restarts_total.labels(service=service)
        elif what == "crashed":
            m.gateway_service_crashes_total.labels(service=service).inc()
        elif what == "restarting":
            m.gateway_service_restarts_total.labels(service=service).inc()
