"""Projections of the event log: state, health and the startup timeline.

Each projection is fed events in order (replay from seq 0, then live) and holds no state the
log does not imply. Replaying a saved log through fresh projections gives the same answers as
the live run; a sequence the statechart does not allow raises ``InvalidTransition``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from routeiq.errors import InvalidTransition
from routeiq.lifecycle.events import Event, EventKind
from routeiq.lifecycle.statechart import Statechart, StateMachine

__all__ = [
    "LifecycleProjection",
    "LifecycleStatus",
    "PhaseStep",
    "StartupTimeline",
    "replay",
    "split_runs",
]

# The phase of work that leads into each startup state.
PHASE_OF_TRIGGER = {
    "configure": "configure",
    "observe": "observe",
    "patch": "patch",
    "serve": "serve",
}
NEXT_PHASE = {
    "created": "configure",
    "configured": "observe",
    "observing": "patch",
    "patched": "serve",
}


@dataclass(frozen=True, slots=True)
class LifecycleStatus:
    state: str
    ready: bool
    live: bool
    failed_phase: str | None
    error: str | None
    draining_since: float | None


class LifecycleProjection:
    """Current lifecycle state, readiness and liveness, driven only by transition events."""

    def __init__(self, chart: Statechart) -> None:
        self._machine = StateMachine(chart)
        self.failed_phase: str | None = None
        self.error: str | None = None
        self.draining_since: float | None = None
        self.transitions = 0

    def __call__(self, event: Event) -> None:
        if event.kind != EventKind.TRANSITION or event.trigger is None:
            return
        if event.from_state != self._machine.state:
            raise InvalidTransition(
                self._machine.chart.name,
                self._machine.state,
                f"{event.trigger} (recorded from {event.from_state!r})",
            )
        _, to_state = self._machine.fire(event.trigger)
        if to_state != event.to_state:
            raise InvalidTransition(
                self._machine.chart.name, event.from_state or "?", event.trigger
            )
        self.transitions += 1
        if to_state == "failed":
            phase = event.attributes.get("phase")
            self.failed_phase = None if phase is None else str(phase)
            self.error = event.error
        elif to_state == "draining":
            self.draining_since = event.mono_time

    @property
    def state(self) -> str:
        return self._machine.state

    def status(self) -> LifecycleStatus:
        state = self._machine.state
        return LifecycleStatus(
            state=state,
            ready=state == "serving",
            live=state != "failed",
            failed_phase=self.failed_phase,
            error=self.error,
            draining_since=self.draining_since,
        )


@dataclass(frozen=True, slots=True)
class PhaseStep:
    name: str
    kind: str  # "phase" or "component"
    parent: str | None
    start_offset_s: float
    duration_s: float
    ok: bool
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "parent": self.parent,
            "start_offset_s": round(self.start_offset_s, 6),
            "duration_s": round(self.duration_s, 6),
            "ok": self.ok,
            "error": self.error,
        }


class StartupTimeline:
    """Per-phase and per-component startup timeline (like Spring Boot's ``/actuator/startup``).

    Time zero is the first event of the log (the gateway's creation). A phase runs from the
    transition that entered the previous state to the transition that enters its own; a
    component belongs to the phase that was running when it finished.
    """

    def __init__(self) -> None:
        self._origin: float | None = None
        self._origin_wall: float | None = None
        self._phase_start: float | None = None
        self._current_phase: str | None = "configure"
        self.steps: list[PhaseStep] = []
        self.total_s: float | None = None
        self.outcome: str = "starting"

    def __call__(self, event: Event) -> None:
        if self._origin is None:
            self._origin = event.mono_time
            self._origin_wall = event.wall_time
            self._phase_start = event.mono_time
        if self.total_s is not None and self.outcome != "starting":
            return
        if event.kind == EventKind.COMPONENT and event.component is not None:
            duration = event.duration_s or 0.0
            self.steps.append(
                PhaseStep(
                    name=event.component,
                    kind="component",
                    parent=self._current_phase,
                    start_offset_s=event.mono_time - duration - self._origin,
                    duration_s=duration,
                    ok=event.ok,
                    error=event.error,
                )
            )
        elif event.kind == EventKind.TRANSITION and self._current_phase is not None:
            assert self._phase_start is not None  # set by the first event
            ok = event.to_state not in {"failed", "draining"}
            self.steps.append(
                PhaseStep(
                    name=self._current_phase,
                    kind="phase",
                    parent=None,
                    start_offset_s=self._phase_start - self._origin,
                    duration_s=event.mono_time - self._phase_start,
                    ok=ok,
                    error=event.error,
                )
            )
            self._phase_start = event.mono_time
            if event.to_state == "serving":
                self.total_s = event.mono_time - self._origin
                self.outcome = "serving"
                self._current_phase = None
            elif not ok:
                self.total_s = event.mono_time - self._origin
                self.outcome = str(event.to_state)
                self._current_phase = None
            else:
                self._current_phase = NEXT_PHASE.get(str(event.to_state))

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "started_at": self._origin_wall,
            "total_s": None if self.total_s is None else round(self.total_s, 6),
            "phases": [s.to_dict() for s in self.steps if s.kind == "phase"],
            "components": [s.to_dict() for s in self.steps if s.kind == "component"],
        }


def replay(
    chart: Statechart, events: Iterable[Event]
) -> tuple[LifecycleProjection, StartupTimeline]:
    """Rebuild the projections from saved events; raises ``InvalidTransition`` if impossible."""
    state, timeline = LifecycleProjection(chart), StartupTimeline()
    for expected, event in enumerate(events):
        if event.seq != expected:
            raise ValueError(f"event seq {event.seq} out of order: expected {expected}")
        state(event)
        timeline(event)
    return state, timeline


def split_runs(events: Iterable[Event]) -> list[list[Event]]:
    """Separate a sink file's events into runs: one per (worker, pid), restarting at seq 0."""
    runs: list[list[Event]] = []
    current: dict[tuple[str, int], list[Event]] = {}
    for event in events:
        key = (event.worker_id, event.pid)
        if event.seq == 0 or key not in current:
            current[key] = []
            runs.append(current[key])
        current[key].append(event)
    return runs
