"""Injected time: the lifecycle core, the supervisor and the elector never read the system clock.

One ``Clock`` gives wall time (for events), monotonic time (for durations and deadlines) and an
async ``sleep`` on that monotonic time. ``SystemClock`` is the real one; ``ManualClock`` moves
only when told to, for tests and replays. Per-call timeouts (``anyio.fail_after``) still use the
event loop's clock: a ``Clock`` decides when to act, not how long one call may take.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def wall(self) -> float: ...
    def monotonic(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to; for tests and replays.

    ``sleep`` waits until the clock has been moved past its deadline (``advance`` or
    ``run_for``); with ``autojump`` it moves the clock itself by the time slept, for code that
    only needs time to pass (trio's ``MockClock`` has the same switch).
    """

    def __init__(
        self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0, *, autojump: bool = False
    ) -> None:
        self._wall, self._mono = wall, monotonic
        self._autojump = autojump
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = 0

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        if self._autojump:
            self.advance(seconds)
            await anyio.lowlevel.checkpoint()
            return
        self._seq += 1
        sleeper = (self._mono + seconds, self._seq, anyio.Event())
        self._sleepers.append(sleeper)
        try:
            await sleeper[2].wait()
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` ahead; every sleeper due by then wakes (at the new time)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._move_to(self._mono + seconds)
        for sleeper in [s for s in self._sleepers if s[0] <= self._mono]:
            self._sleepers.remove(sleeper)
            sleeper[2].set()

    async def run_for(self, seconds: float) -> None:
        """Let ``seconds`` pass: wake each sleeper at its own deadline, in order, and let every
        task run until all are blocked before moving on."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        target = self._mono + seconds
        for _ in range(100_000):
            await anyio.wait_all_tasks_blocked()
            due = sorted(s for s in self._sleepers if s[0] <= target)
            if not due:
                break
            deadline, _, event = due[0]
            self._sleepers.remove(due[0])
            self._move_to(max(self._mono, deadline))
            event.set()
        else:
            raise RuntimeError("time does not settle: something sleeps for zero seconds in a loop")
        self._move_to(target)
        await anyio.wait_all_tasks_blocked()

    def _move_to(self, monotonic: float) -> None:
        self._wall += monotonic - self._mono
        self._mono = monotonic
