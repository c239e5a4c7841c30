"""Test doubles for the election core: a manual clock, a scripted backend, an event recorder."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from routeiq.errors import LeadershipLost
from routeiq.leadership import ElectionUnavailable, LeaderTerm, LeaderTimings


class ManualTime:
    """Monotonic time that moves only in ``advance``; ``sleep`` blocks until then."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = 0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        self._seq += 1
        sleeper = (self.now + seconds, self._seq, anyio.Event())
        self._sleepers.append(sleeper)
        try:
            await sleeper[2].wait()
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its deadline and letting it run."""
        target = self.now + seconds
        for _ in range(100_000):
            await anyio.wait_all_tasks_blocked()
            due = sorted(s for s in self._sleepers if s[0] <= target)
            if not due:
                break
            deadline, _, event = due[0]
            self._sleepers.remove(due[0])
            self.now = max(self.now, deadline)
            event.set()
        else:
            raise RuntimeError("time does not settle: something sleeps for zero seconds in a loop")
        self.now = target
        await anyio.wait_all_tasks_blocked()


class RealTime(ManualTime):
    """The event loop's clock behind the same interface."""

    @property
    def now(self) -> float:
        return time.monotonic()

    @now.setter
    def now(self, value: float) -> None:
        """Ignored: the real clock cannot be set (ManualTime's code assigns ``now``)."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


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
    """An ``Election`` whose answers the test sets; time comes from a ``ManualTime``."""

    clock: ManualTime
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
        self.calls.append((self.clock.now, "campaign"))
        outcome = self.campaigns.pop(0) if self.campaigns else "lose"
        if outcome == "down":
            raise ElectionUnavailable("backend down")
        if outcome == "lose":
            self.leader_id = "other"
            return None
        self.token += 1
        self.vacant = False
        self.term = LeaderTerm(self.candidate_id, self.token, self.clock.now)
        self.leader_id = self.candidate_id
        return self.term

    async def renew(self, term: LeaderTerm) -> None:
        self.calls.append((self.clock.now, "renew"))
        if self.renew_mode == "down":
            raise ElectionUnavailable("backend down")
        if self.renew_mode == "lost":
            raise LeadershipLost("lease gone")
        if self.renew_mode == "hang":
            await anyio.sleep_forever()

    async def resign(self, term: LeaderTerm) -> None:
        self.calls.append((self.clock.now, f"resign:{term.fencing_token}"))
        self.term = None
        self.leader_id = None

    async def wait_vacancy(self, period: float) -> bool:
        if not self.vacant:
            await self.clock.sleep(period)
        return self.vacant
