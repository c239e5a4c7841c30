"""Routing decisions, and how a request learns the ones made for it.

Every deployment pick a RouteIQ strategy makes becomes a ``RoutingDecision``. The HTTP layer
opens ``recording_decisions()`` around its ``await router.acompletion(...)`` (or any other
endpoint call); the routing hook appends each decision made for that call to the recorder the
context variable holds. litellm 1.110 runs the custom strategy inside the caller's task (or a
task spawned from it, which inherits a copy of its context), so each concurrent request sees
only its own decisions, retries included. The decision for a streaming response is known when
the call returns the stream, before the first byte is sent.

Nothing is recorded for a call made outside ``recording_decisions()``; a hook's ``on_decision``
callback still sees every decision (that is where metrics count them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = [
    "NO_ARM",
    "DecisionRecorder",
    "RoutingDecision",
    "current_recorder",
    "recording_decisions",
]

NO_ARM = "none"


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """One deployment pick: which strategy (and A/B arm) chose which deployment of which group."""

    strategy: str
    arm: str
    deployment_id: str
    model_group: str


class DecisionRecorder:
    """The decisions made for one request, in order (a retry or fallback adds one)."""

    __slots__ = ("_decisions",)

    def __init__(self) -> None:
        self._decisions: list[RoutingDecision] = []

    def record(self, decision: RoutingDecision) -> None:
        self._decisions.append(decision)

    @property
    def decisions(self) -> tuple[RoutingDecision, ...]:
        return tuple(self._decisions)

    @property
    def last(self) -> RoutingDecision | None:
        """The pick that served the request (the last one made), if any was made."""
        return self._decisions[-1] if self._decisions else None


_current: ContextVar[DecisionRecorder | None] = ContextVar(
    "routeiq_routing_decisions", default=None
)


def current_recorder() -> DecisionRecorder | None:
    return _current.get()


@contextmanager
def recording_decisions() -> Iterator[DecisionRecorder]:
    """Record the decisions made in this context (and in tasks started from it) until exit."""
    recorder = DecisionRecorder()
    token = _current.set(recorder)
    try:
        yield recorder
    finally:
        _current.reset(token)
