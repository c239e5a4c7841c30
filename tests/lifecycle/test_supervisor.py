"""The supervisor's restart policies, backoff and intensity limit, on an injected clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from anyio.abc import TaskStatus

from routeiq.lifecycle.clock import ManualClock
from routeiq.lifecycle.events import EventKind, EventLog
from routeiq.lifecycle.supervisor import RestartPolicy, Service, Supervisor

pytestmark = pytest.mark.anyio


class Harness:
    def __init__(self, **limits: float) -> None:
        self.clock = ManualClock(autojump=True)
        self.log = EventLog(self.clock, worker_id="w", pid=1)
        self.gave_up: list[tuple[str, str]] = []
        self.supervisor = Supervisor(
            self.log,
            clock=self.clock,
            on_give_up=lambda name, reason: self.gave_up.append((name, reason)),
            **limits,  # type: ignore[arg-type]
        )

    @property
    def sleeps(self) -> list[float]:
        """The backoff the supervisor slept before each restart (the clock jumps by it)."""
        return [
            float(e.attributes["backoff_s"])  # type: ignore[arg-type]
            for e in self.log.events
            if e.kind == EventKind.SERVICE and e.trigger == "restarting"
        ]

    def steps(self, service: str) -> list[str]:
        return [
            str(e.trigger)
            for e in self.log.events
            if e.kind == EventKind.SERVICE and e.component == service
        ]


def runs(outcomes: list[str], calls: list[int]) -> Callable[..., Awaitable[None]]:
    """A service that, on its n-th run, becomes ready then crashes/exits/blocks as told."""

    async def run(*, task_status: TaskStatus[None]) -> None:
        index = len(calls)
        calls.append(index)
        task_status.started()
        outcome = outcomes[index] if index < len(outcomes) else "block"
        if outcome == "crash":
            raise RuntimeError(f"crash {index}")
        if outcome == "block":
            await anyio.sleep_forever()

    return run


@pytest.mark.parametrize(
    ("policy", "outcomes", "expected_runs"),
    [
        ("permanent", ["exit", "crash", "block"], 3),
        ("transient", ["crash", "exit"], 2),
        ("temporary", ["crash"], 1),
    ],
)
async def test_restart_policies(
    policy: RestartPolicy, outcomes: list[str], expected_runs: int
) -> None:
    harness = Harness(max_restarts=10, window_s=60, backoff_initial_s=0.5, backoff_max_s=8)
    calls: list[int] = []
    async with harness.supervisor.running() as supervisor:
        await supervisor.start(Service("svc", runs(outcomes, calls), policy))
        with anyio.fail_after(5):
            while len(calls) < expected_runs or (
                expected_runs == 3 and "svc" not in supervisor.statistics().running
            ):
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
    assert len(calls) == expected_runs
    assert harness.sleeps == [0.5, 1.0][: expected_runs - 1]


async def test_backoff_doubles_up_to_its_cap_and_intensity_gives_up() -> None:
    harness = Harness(max_restarts=4, window_s=100, backoff_initial_s=1, backoff_max_s=3)
    calls: list[int] = []
    async with harness.supervisor.running() as supervisor:
        await supervisor.start(Service("flaky", runs(["crash"] * 10, calls)))
        with anyio.fail_after(5):
            while not harness.gave_up:
                await anyio.lowlevel.checkpoint()
    assert harness.sleeps == [1, 2, 3, 3]
    assert len(calls) == 5
    assert harness.gave_up[0][0] == "flaky"
    assert "exceeded the restart intensity (4 restarts in 100s)" in harness.gave_up[0][1]
    assert harness.steps("flaky")[-2:] == ["crashed", "gave_up"]
    assert harness.supervisor.statistics().gave_up


async def test_restarts_outside_the_window_do_not_count() -> None:
    harness = Harness(max_restarts=2, window_s=10, backoff_initial_s=6, backoff_max_s=6)
    calls: list[int] = []
    async with harness.supervisor.running() as supervisor:
        await supervisor.start(Service("slow-crasher", runs(["crash"] * 5, calls)))
        with anyio.fail_after(5):
            while len(calls) < 5:
                await anyio.lowlevel.checkpoint()
        # Each restart is 6 s after the previous one: never 3 in a 10 s window.
        assert not harness.gave_up


async def test_a_service_that_fails_before_ready_fails_start() -> None:
    harness = Harness()

    async def broken(*, task_status: TaskStatus[None]) -> None:
        raise OSError("port in use")

    async with harness.supervisor.running() as supervisor:
        with pytest.raises(OSError, match="port in use"):
            await supervisor.start(Service("broken", broken))
    assert harness.steps("broken") == ["starting", "crashed"]


async def test_stop_restarting_lets_ended_services_stay_ended() -> None:
    harness = Harness(backoff_initial_s=0, backoff_max_s=0)
    calls: list[int] = []
    done = anyio.Event()

    async def ends_when_told(*, task_status: TaskStatus[None]) -> None:
        calls.append(len(calls))
        task_status.started()
        await done.wait()

    async with harness.supervisor.running() as supervisor:
        await supervisor.start(Service("job", ends_when_told))
        supervisor.stop_restarting()
        done.set()
        with anyio.fail_after(5):
            while "exited" not in harness.steps("job"):
                await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
    assert calls == [0]
    assert harness.steps("job") == ["starting", "started", "exited"]


async def test_duplicate_names_are_refused() -> None:
    harness = Harness()
    calls: list[int] = []
    async with harness.supervisor.running() as supervisor:
        await supervisor.start(Service("one", runs([], calls)))
        with pytest.raises(Exception, match="already supervised"):
            await supervisor.start(Service("one", runs([], calls)))
