"""Scripted event logs: a gateway-like run through the real chart, on a manual clock."""

from __future__ import annotations

from routeiq.lifecycle.clock import ManualClock
from routeiq.lifecycle.events import EventKind, EventLog
from routeiq.lifecycle.statechart import Statechart, StateMachine


class ScriptedRun:
    """Components finish, then the phase's trigger fires, each after the time it is told."""

    def __init__(self, chart: Statechart, log: EventLog, clock: ManualClock) -> None:
        self.machine = StateMachine(chart)
        self.log, self.clock = log, clock
        log.append(EventKind.CREATED, to_state=self.machine.state)

    def component(self, name: str, seconds: float, *, error: str | None = None) -> None:
        self.clock.advance(seconds)
        self.log.append(
            EventKind.COMPONENT, component=name, duration_s=seconds, ok=error is None, error=error
        )

    def fire(
        self, trigger: str, *, after: float = 0.0, error: str | None = None, **attributes: str
    ) -> None:
        self.clock.advance(after)
        before, to_state = self.machine.fire(trigger)
        self.log.append(
            EventKind.TRANSITION,
            trigger=trigger,
            from_state=before,
            to_state=to_state,
            ok=error is None,
            error=error,
            attributes=attributes,
        )
