"""The event log: the only place lifecycle state lives.

Every transition, component init and teardown, service start/crash/restart, leadership change
and config reload is an immutable ``Event`` appended to an ``EventLog``. Everything else that
knows about the lifecycle (current state, health, startup timeline, metrics, traces) is a
projection: a subscriber that is replayed the log from seq 0 and then fed each new event.

Secrets never enter the log: every string is scrubbed of the configured secret values before
the event is built. A subscriber that raises is a bug in that projection; it is not hidden.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from routeiq.lifecycle.clock import Clock

__all__ = [
    "Event",
    "EventKind",
    "EventLog",
    "JsonlSink",
    "Redactor",
    "read_jsonl",
]

AttrValue = str | int | float | bool | None


class EventKind:
    CREATED = "created"  # the gateway object began its lifecycle: time zero of the timeline
    TRANSITION = "transition"
    COMPONENT = "component"  # a startup component finished initialising (ok or error)
    TEARDOWN = "teardown"  # a component's undo ran (ok or error)
    SERVICE = "service"  # a supervised service started, crashed, exited or restarted
    LEADERSHIP = "leadership"
    CONFIG = "config"
    WARNING = "warning"
    WORKER = "worker"  # a master's worker process: spawned, ready, exited, restarting

    ALL = frozenset(
        {CREATED, TRANSITION, COMPONENT, TEARDOWN, SERVICE, LEADERSHIP, CONFIG, WARNING, WORKER}
    )


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    kind: str
    wall_time: float
    mono_time: float
    worker_id: str
    pid: int
    trigger: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    component: str | None = None
    duration_s: float | None = None
    ok: bool = True
    error: str | None = None
    attributes: Mapping[str, AttrValue] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "wall_time": self.wall_time,
            "mono_time": self.mono_time,
            "worker_id": self.worker_id,
            "pid": self.pid,
            "trigger": self.trigger,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "component": self.component,
            "duration_s": self.duration_s,
            "ok": self.ok,
            "error": self.error,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        try:
            kind = str(data["kind"])
            if kind not in EventKind.ALL:
                raise ValueError(f"unknown event kind {kind!r}")
            attributes = data.get("attributes") or {}
            if not isinstance(attributes, Mapping):
                raise ValueError("attributes must be an object")
            duration = data.get("duration_s")
            return cls(
                seq=int(data["seq"]),
                kind=kind,
                wall_time=float(data["wall_time"]),
                mono_time=float(data["mono_time"]),
                worker_id=str(data["worker_id"]),
                pid=int(data["pid"]),
                trigger=_opt_str(data.get("trigger")),
                from_state=_opt_str(data.get("from_state")),
                to_state=_opt_str(data.get("to_state")),
                component=_opt_str(data.get("component")),
                duration_s=None if duration is None else float(duration),
                ok=bool(data.get("ok", True)),
                error=_opt_str(data.get("error")),
                attributes=MappingProxyType(dict(attributes)),
            )
        except KeyError as exc:
            raise ValueError(f"event is missing field {exc}") from None


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


class Redactor:
    """Replaces every known secret value in a string with ``***``.

    Values shorter than ``MIN_LENGTH`` are not treated as secrets: masking a placeholder key
    such as ``k`` or ``none`` would mangle every word that contains it.
    """

    MASK = "***"
    MIN_LENGTH = 6

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        kept = {*self._secrets, *(s for s in secrets if len(s) >= self.MIN_LENGTH)}
        # Longest first so that a secret containing another is masked whole.
        self._secrets = sorted(kept, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, self.MASK)
        return text

    def value(self, value: AttrValue) -> AttrValue:
        return self(value) if isinstance(value, str) else value


Subscriber = Callable[[Event], None]


class EventLog:
    """Append-only, in-memory log of ``Event``s with replaying subscribers.

    ``append`` is synchronous and cannot block; sinks and projections run inline, in order of
    subscription, so that a projection is never behind the log it reads.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        worker_id: str,
        pid: int | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self._clock = clock
        self.worker_id = worker_id
        self.pid = os.getpid() if pid is None else pid
        self.redactor = redactor or Redactor()
        self._events: list[Event] = []
        self._subscribers: list[Subscriber] = []

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def append(
        self,
        kind: str,
        *,
        trigger: str | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        component: str | None = None,
        duration_s: float | None = None,
        ok: bool = True,
        error: str | None = None,
        attributes: Mapping[str, AttrValue] | None = None,
    ) -> Event:
        if kind not in EventKind.ALL:
            raise ValueError(f"unknown event kind {kind!r}")
        redact = self.redactor
        event = Event(
            seq=len(self._events),
            kind=kind,
            wall_time=self._clock.wall(),
            mono_time=self._clock.monotonic(),
            worker_id=self.worker_id,
            pid=self.pid,
            trigger=trigger,
            from_state=from_state,
            to_state=to_state,
            component=None if component is None else redact(component),
            duration_s=duration_s,
            ok=ok,
            error=None if error is None else redact(error),
            attributes=MappingProxyType(
                {redact(str(k)): redact.value(v) for k, v in (attributes or {}).items()}
            ),
        )
        self.extend_raw(event)
        return event

    def extend_raw(self, event: Event) -> None:
        """Append an already-built event (replay); its seq must be the next one."""
        if event.seq != len(self._events):
            raise ValueError(f"event seq {event.seq} out of order: expected {len(self._events)}")
        self._events.append(event)
        for subscriber in tuple(self._subscribers):
            subscriber(event)

    def subscribe(self, subscriber: Subscriber, *, replay: bool = True) -> Callable[[], None]:
        """Feed ``subscriber`` every past event (if ``replay``), then each new one."""
        if replay:
            for event in tuple(self._events):
                subscriber(event)
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe


class JsonlSink:
    """Persists events as JSON lines, flushed per event so a crash loses at most one line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: Path) -> list[Event]:
    """Events from a JSONL sink file; a malformed line raises ``ValueError`` naming it."""
    events: list[Event] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                events.append(Event.from_dict(json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    return events
