"""The gateway's startup as one OpenTelemetry trace, projected from the event log.

``StartupTraceProjection`` is an event-log subscriber. Subscribed with replay as soon as the
tracer provider exists (in the ``observe`` phase), it still shows the phases that ran before:
every span gets explicit start and end times taken from the events. The trace has a root span
for the whole startup, a child per phase (``configure``, ``observe``, ``patch``, ``serve``) and,
under its phase, a span per component (a component event is appended when the component
finishes and carries its duration). A component or phase that failed has status ERROR with the
event's error text; so has the root when the gateway went ``failed``.

Times are the creation event's wall time plus monotonic offsets, so a wall-clock step during
startup cannot make a span end before it starts. Replaying a saved log gives the same spans
(names, parents, times, attributes, statuses) as the live run; trace and span ids are new.

The trace ends when startup ends (``serving``, ``failed``, or a shutdown before serving); later
events (services, drain) are not part of it. A log that stops mid-startup leaves the spans open:
they are never exported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from routeiq.lifecycle.events import Event, EventKind

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

__all__ = ["STARTUP_PHASES", "STARTUP_TRACER", "StartupTraceProjection"]

STARTUP_TRACER = "routeiq.lifecycle"
STARTUP_PHASES: tuple[str, ...] = ("configure", "observe", "patch", "serve")
ROOT_SPAN = "startup"


class StartupTraceProjection:
    """Emits the startup trace into ``tracer_provider``; feed it the log from seq 0."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self._tracer = tracer_provider.get_tracer(STARTUP_TRACER)
        self._origin_wall_ns = 0
        self._origin_mono = 0.0
        self._root: Span | None = None
        self._phase: tuple[str, Span] | None = None
        self._worker: dict[str, str | int] = {}
        self.outcome: str | None = None  # serving, failed or aborted once startup has ended

    @property
    def trace_id(self) -> str | None:
        """The startup trace's id (32 hex digits), once the creation event has been seen."""
        if self._root is None:
            return None
        return f"{self._root.get_span_context().trace_id:032x}"

    def __call__(self, event: Event) -> None:
        if self.outcome is not None:
            return
        if event.kind == EventKind.CREATED:
            self._start(event)
        elif self._root is None:
            return  # a log without its creation event has no time zero
        elif event.kind == EventKind.COMPONENT and event.component is not None:
            self._component(event, event.component)
        elif event.kind == EventKind.TRANSITION:
            self._transition(event)

    # --- events ---------------------------------------------------------------------------

    def _start(self, event: Event) -> None:
        if self._root is not None:
            return
        self._origin_wall_ns = round(event.wall_time * 1e9)
        self._origin_mono = event.mono_time
        self._worker = {"routeiq.worker_id": event.worker_id, "process.pid": event.pid}
        attributes: dict[str, str | int | float] = dict(self._worker)
        uptime = event.attributes.get("process_uptime_s")
        if isinstance(uptime, (int, float)) and uptime >= 0:
            attributes["routeiq.process_uptime_s"] = uptime
        self._root = self._tracer.start_span(
            ROOT_SPAN, attributes=attributes, start_time=self._at(event.mono_time)
        )
        self._open_phase(STARTUP_PHASES[0], event.mono_time)

    def _component(self, event: Event, component: str) -> None:
        from opentelemetry.trace import set_span_in_context

        assert self._root is not None
        phase = event.attributes.get("phase")
        parent = self._root
        if self._phase is not None and (phase is None or phase == self._phase[0]):
            parent = self._phase[1]
        attributes: dict[str, str | int] = {**self._worker, "routeiq.component": component}
        if isinstance(phase, str):
            attributes["routeiq.phase"] = phase
        duration = max(event.duration_s or 0.0, 0.0)
        span = self._tracer.start_span(
            f"component {component}",
            context=set_span_in_context(parent),
            attributes=attributes,
            start_time=self._at(event.mono_time - duration),
        )
        self._finish(span, event, event.mono_time)

    def _transition(self, event: Event) -> None:
        assert self._root is not None
        to_state = event.to_state
        ok = to_state != "failed"
        if self._phase is not None:
            self._finish(self._phase[1], event, event.mono_time, ok=ok)
            self._phase = None
        if to_state in ("serving", "failed", "draining"):
            self.outcome = {"serving": "serving", "failed": "failed"}.get(to_state, "aborted")
            self._root.set_attribute("routeiq.startup.outcome", self.outcome)
            if to_state == "failed":
                phase = event.attributes.get("phase")
                if isinstance(phase, str):
                    self._root.set_attribute("routeiq.startup.failed_phase", phase)
            self._finish(self._root, event, event.mono_time, ok=ok)
            return
        trigger = event.trigger or ""
        if trigger in STARTUP_PHASES[:-1]:
            self._open_phase(STARTUP_PHASES[STARTUP_PHASES.index(trigger) + 1], event.mono_time)

    # --- spans ----------------------------------------------------------------------------

    def _open_phase(self, phase: str, mono_time: float) -> None:
        from opentelemetry.trace import set_span_in_context

        assert self._root is not None
        span = self._tracer.start_span(
            f"phase {phase}",
            context=set_span_in_context(self._root),
            attributes={**self._worker, "routeiq.phase": phase},
            start_time=self._at(mono_time),
        )
        self._phase = (phase, span)

    def _finish(
        self, span: Span, event: Event, mono_time: float, *, ok: bool | None = None
    ) -> None:
        from opentelemetry.trace import Status, StatusCode

        failed = not event.ok if ok is None else not ok
        end = self._at(mono_time)
        if failed:
            error = event.error or "failed"
            span.set_attribute("error.type", _error_type(error))
            span.add_event("exception", {"exception.message": error}, timestamp=end)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)

    def _at(self, mono_time: float) -> int:
        return self._origin_wall_ns + round((mono_time - self._origin_mono) * 1e9)


def _error_type(error: str) -> str:
    """The class named by a ``describe()``d error (``"RuntimeError: ..."``), else ``"error"``."""
    name = error.split(":", 1)[0].strip()
    return name if name.isidentifier() else "error"
