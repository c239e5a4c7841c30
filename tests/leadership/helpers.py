"""Test doubles for the election core: a scripted backend and an event recorder."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from routeiq.errors import LeadershipLost
from routeiq.leadership import ElectionUnavailable, LeaderTerm, LeaderTimings
from routeiq.lifecycle.clock import Clock


@dataclass
class Recorded:
    """A ``record`` callback that keeps every event with the time it was recorded."""

    monotonic: Callable[[], float] = time.monotonic
    events: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    _waiters: list[tuple[str | None, int, anyio.Event]] = field(default_factory=list)

    def __call__(self, kind: str, attributes: Mapping[str, object]) -> None:
        assert kind == "leadership"
        self.events.append((self.monotonic(), dict(attributes)))
        for trigger, count, event in self._waiters:
            if len(self.of(trigger) if trigger else self.events) >= count:
                event.set()

    @property
    def triggers(self) -> list[object]:
        return [attrs["trigger"] for _, attrs in self.events]

    def of(self, trigger: str) -> list[tuple[float, dict[str, object]]]:
        return [(t, attrs) for t, attrs in self.events if attrs["trigger"] == trigger]

    async def wait_events(self, count: int) -> None:
        """Wait until ``count`` events of any kind have been recorded."""
        if len(self.events) < count:
            event = anyio.Event()
            self._waiters.append((None, count, event))
            await event.wait()

    async def wait_for(self, trigger: str, count: int = 1) -> tuple[float, dict[str, object]]:
        """Wait until ``trigger`` has been recorded ``count`` times; returns that event."""
        if len(self.of(trigger)) < count:
            event = anyio.Event()
            self._waiters.append((trigger, count, event))
            await event.wait()
        return self.of(trigger)[count - 1]


@dataclass
class ScriptedElection:
    """An ``Election`` whose answers the test sets; time comes from ``clock``."""

    clock: Clock
    candidate_id: str = "me"
    timings: LeaderTimings = field(default_factory=lambda: LeaderTimings(2.0, 1.2, 0.3))
    leader_id: str | None = None
    campaigns: list[str] = field(default_factory=list)  # "win" | "lose" | "down"; then "lose"
    renew_mode: str = "ok"  # "ok" | "down" | "lost" | "hang"
    vacant: bool = False
    token: int = 0
    calls: list[tuple[float, str]] = field(default_factory=list)
    term: LeaderTerm | None = None

    async def campaign(self) -> LeaderTerm | None:
        self.calls.append((self.clock.monotonic(), "campaign"))
        outcome = self.campaigns.pop(0) if self.campaigns else "lose"
        if outcome == "down":
            raise ElectionUnavailable("backend down")
        if outcome == "lose":
            self.leader_id = "other"
            return None
        self.token += 1
        self.vacant = False
        self.term = LeaderTerm(self.candidate_id, self.token, self.clock.monotonic())
        self.leader_id = self.candidate_id
        return self.term

    async def renew(self, term: LeaderTerm) -> None:
        self.calls.append((self.clock.monotonic(), "renew"))
        if self.renew_mode == "down":
            raise ElectionUnavailable("backend down")
        if self.renew_mode == "lost":
            raise LeadershipLost("lease gone")
        if self.renew_mode == "hang":
            await anyio.sleep_forever()

    async def resign(self, term: LeaderTerm) -> None:
        self.calls.append((self.clock.monotonic(), f"resign:{term.fencing_token}"))
        self.term = None
        self.leader_id = None

    async def wait_vacancy(self, period: float) -> bool:
        if not self.vacant:
            await self.clock.sleep(period)
        return self.vacant
