"""Statecharts loaded from ``statecharts/*.yaml``: the one definition of allowed transitions.

A ``Statechart`` is plain data read from YAML. ``Statechart.machine()`` builds a
``transitions.Machine`` from it and ``StateMachine`` wraps that machine so that a trigger that
is not allowed raises ``InvalidTransition`` (and nothing else does). The YAML ships inside the
wheel as ``routeiq/statecharts``; in a source checkout it is read from the repo's
``statecharts/`` folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from routeiq.errors import ConfigError, InvalidTransition
from routeiq.lifecycle.events import EventKind, EventLog

__all__ = ["StateMachine", "Statechart", "Transition", "statechart_dir"]


@dataclass(frozen=True, slots=True)
class Transition:
    trigger: str
    sources: tuple[str, ...]
    dest: str


def statechart_dir() -> Path:
    """Where the statechart YAML files are: inside the installed package, else the checkout."""
    packaged = resources.files("routeiq").joinpath("statecharts")
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "statecharts"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("routeiq's statecharts are missing: reinstall the routeiq package")


@dataclass(frozen=True, slots=True)
class Statechart:
    name: str
    initial: str
    states: tuple[str, ...]
    terminal: tuple[str, ...]
    transitions: tuple[Transition, ...]

    def __post_init__(self) -> None:
        known = set(self.states)
        problems: list[tuple[str, str]] = []
        if self.initial not in known:
            problems.append(("initial", f"{self.initial!r} is not a declared state"))
        problems += [
            ("terminal", f"{s!r} is not a declared state") for s in self.terminal if s not in known
        ]
        seen: set[tuple[str, str]] = set()
        for i, t in enumerate(self.transitions):
            for state in (*t.sources, t.dest):
                if state not in known:
                    problems.append((f"transitions[{i}]", f"{state!r} is not a declared state"))
            for source in t.sources:
                if source in self.terminal:
                    problems.append((f"transitions[{i}]", f"terminal state {source!r} has exits"))
                if (source, t.trigger) in seen:
                    problems.append((f"transitions[{i}]", f"{t.trigger!r} from {source!r} twice"))
                seen.add((source, t.trigger))
        if problems:
            raise ConfigError(problems, source=f"statechart {self.name!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Statechart:
        try:
            transitions = tuple(
                Transition(
                    trigger=str(t["trigger"]),
                    sources=tuple(t["source"]) if isinstance(t["source"], list) else (t["source"],),
                    dest=str(t["dest"]),
                )
                for t in data["transitions"]
            )
            return cls(
                name=str(data["name"]),
                initial=str(data["initial"]),
                states=tuple(str(s) for s in data["states"]),
                terminal=tuple(str(s) for s in data.get("terminal") or ()),
                transitions=transitions,
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed statechart: missing or bad {exc}") from None

    @classmethod
    def from_file(cls, path: Path) -> Statechart:
        return cls.from_mapping(yaml.safe_load(path.read_text(encoding="utf-8")))

    @classmethod
    def load(cls, name: str) -> Statechart:
        return cls.from_file(statechart_dir() / f"{name}.yaml")

    def triggers_from(self, state: str) -> tuple[str, ...]:
        return tuple(t.trigger for t in self.transitions if state in t.sources)

    def target(self, state: str, trigger: str) -> str:
        for t in self.transitions:
            if t.trigger == trigger and state in t.sources:
                return t.dest
        raise InvalidTransition(self.name, state, trigger, self.triggers_from(state))

    def fire(
        self,
        events: EventLog,
        state: str,
        trigger: str,
        *,
        error: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Append the transition ``trigger`` takes from ``state`` to ``events``; its target.

        Raises ``InvalidTransition`` (and appends nothing) when the chart does not allow it.
        """
        to_state = self.target(state, trigger)
        events.append(
            EventKind.TRANSITION,
            trigger=trigger,
            from_state=state,
            to_state=to_state,
            ok=error is None,
            error=error,
            attributes=attributes,
        )
        return to_state

    def machine(self, model: object) -> Any:
        """A ``transitions.Machine`` bound to ``model``, built from this chart only."""
        from transitions import Machine

        return Machine(
            model=model,
            states=list(self.states),
            initial=self.initial,
            transitions=[
                {"trigger": t.trigger, "source": list(t.sources), "dest": t.dest}
                for t in self.transitions
            ],
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=False,
        )

    def to_mermaid(self) -> str:
        lines = ["stateDiagram-v2", f"    [*] --> {self.initial}"]
        for t in self.transitions:
            lines += [f"    {source} --> {t.dest}: {t.trigger}" for source in t.sources]
        lines += [f"    {state} --> [*]" for state in self.terminal]
        return "\n".join(lines) + "\n"


class _Model:
    state: str


class StateMachine:
    """A live ``transitions.Machine`` for a chart; invalid triggers raise ``InvalidTransition``."""

    def __init__(self, chart: Statechart) -> None:
        self.chart = chart
        self._model = _Model()
        self._machine = chart.machine(self._model)

    @property
    def state(self) -> str:
        return self._model.state

    @property
    def terminal(self) -> bool:
        return self._model.state in self.chart.terminal

    def can(self, trigger: str) -> bool:
        return trigger in self.chart.triggers_from(self.state)

    def fire(self, trigger: str) -> tuple[str, str]:
        """Take ``trigger``; returns ``(from_state, to_state)``."""
        from transitions import MachineError

        before = self.state
        if not self.can(trigger):
            raise InvalidTransition(
                self.chart.name, before, trigger, self.chart.triggers_from(before)
            )
        try:
            self._model.trigger(trigger)  # type: ignore[attr-defined]
        except MachineError as exc:  # the chart and the machine disagree: treat as invalid
            raise InvalidTransition(self.chart.name, before, trigger) from exc
        return before, self.state
