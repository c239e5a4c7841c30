"""LeaderElector's timing and state logic, against a scripted backend on a manual clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio
import pytest

from routeiq.errors import LeadershipLost
from routeiq.leadership import LeaderElector, LeaderTerm, LeaderTimings
from routeiq.lifecycle.clock import ManualClock, SystemClock
from routeiq.lifecycle.statechart import Statechart, StateMachine
from tests.leadership.helpers import Recorded, ScriptedElection

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

Work = Callable[[LeaderTerm], Awaitable[None]]


def scripted(*campaigns: str) -> tuple[ManualClock, ScriptedElection, Recorded]:
    clock = ManualClock()
    return clock, ScriptedElection(clock, campaigns=list(campaigns)), Recorded(clock.monotonic)


def elector_for(
    clock: ManualClock, election: ScriptedElection, record: Recorded, *work: Work
) -> LeaderElector:
    return LeaderElector(election, work, record=record, clock=clock)


def resigns(election: ScriptedElection) -> list[str]:
    return [call for _, call in election.calls if call.startswith("resign")]


def test_chart_is_the_leadership_statechart() -> None:
    chart = Statechart.load("leadership")
    assert (chart.name, chart.initial, chart.terminal) == ("leadership", "follower", ())
    assert {(t.trigger, t.sources, t.dest) for t in chart.transitions} == {
        ("campaign", ("follower",), "candidate"),
        ("elected", ("candidate",), "leader"),
        ("abandon", ("candidate",), "follower"),
        ("lose", ("leader",), "follower"),
        ("resign", ("leader",), "follower"),
    }


async def test_renews_every_third_of_the_lease() -> None:
    clock, election, recorded = scripted("win")
    elector = elector_for(clock, election, recorded)
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        await clock.run_for(2.1)
        tg.cancel_scope.cancel()
    renewals = [t - 1000.0 for t, call in election.calls if call == "renew"]
    assert renewals == pytest.approx([2 / 3, 4 / 3, 2.0])
    assert elector.statistics().last_renew == pytest.approx(1002.0)


async def test_steps_down_at_the_renew_deadline_and_cancels_leader_work_first() -> None:
    clock, election, recorded = scripted("win")
    work_ended: list[float] = []

    async def leader_only(term: LeaderTerm) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            work_ended.append(clock.monotonic())

    elector = elector_for(clock, election, recorded, leader_only)
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        await clock.run_for(1.0)
        assert elector.statistics().last_renew == pytest.approx(1000.0 + 2 / 3)
        election.renew_mode = "down"
        await clock.run_for(3.0)
        tg.cancel_scope.cancel()

    last_renew = elector.statistics().last_renew
    assert last_renew is not None
    assert last_renew == pytest.approx(1000.0 + 2 / 3)
    timings = election.timings
    [(lost_at, lost)] = recorded.of("lose")
    # Retried every retry period, decided at the deadline: before the lease can expire.
    attempts = [t for t, call in election.calls if call == "renew" and t > last_renew]
    assert attempts == pytest.approx([last_renew + 2 / 3, last_renew + 2 / 3 + 0.3])
    assert lost_at == pytest.approx(last_renew + timings.renew_deadline)
    assert lost_at < last_renew + timings.lease_duration
    assert work_ended == [lost_at]
    assert "renew_deadline" in str(lost["reason"])
    assert "backend down" in str(lost["reason"])
    assert (lost["from"], lost["to"], lost["fencing_token"]) == ("leader", "follower", 1)
    assert recorded.triggers == ["campaign", "elected", "lose"]
    assert resigns(election) == ["resign:1"]  # the seat is freed for the others
    stats = elector.statistics()
    assert (stats.state, stats.churn, stats.fencing_token) == ("follower", 2, None)


async def test_renewal_that_hangs_is_bounded_by_the_deadline() -> None:
    election = ScriptedElection(SystemClock(), campaigns=["win"])
    election.timings = LeaderTimings(0.6, 0.3, 0.1)
    recorded = Recorded()
    elector = LeaderElector(election, record=recorded)  # real time: the hang is real
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        election.renew_mode = "hang"
        lost_at, _ = await recorded.wait_for("lose")
        tg.cancel_scope.cancel()
    renewed = elector.statistics().last_renew
    assert renewed is not None
    assert lost_at < renewed + election.timings.lease_duration


async def test_leadership_lost_from_backend_or_work_means_lose_then_campaign_on_vacancy() -> None:
    clock, election, recorded = scripted("win", "win")
    go = anyio.Event()

    async def leader_only(term: LeaderTerm) -> None:
        if term.fencing_token == 1:
            await go.wait()
            raise LeadershipLost("fenced write refused")
        await anyio.sleep_forever()

    elector = elector_for(clock, election, recorded, leader_only)
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        go.set()
        _, lost = await recorded.wait_for("lose")
        assert "fenced write refused" in str(lost["reason"])
        assert elector.term is None
        assert elector.state == "follower"
        election.vacant = True
        await clock.run_for(0.3)
        term = await elector.wait_leader()
        assert term.fencing_token == 2
        election.renew_mode = "lost"
        await clock.run_for(1.0)
        _, lost = await recorded.wait_for("lose", 2)
        assert "lease gone" in str(lost["reason"])
        tg.cancel_scope.cancel()
    assert recorded.triggers == ["campaign", "elected", "lose", "campaign", "elected", "lose"]
    assert elector.statistics().churn == 4


async def test_unreachable_backend_abandons_and_campaigns_again_on_vacancy() -> None:
    clock, election, recorded = scripted("down", "win")
    elector = elector_for(clock, election, recorded)
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)  # started once the first campaign has an outcome
        assert elector.state == "follower"
        assert recorded.triggers == ["campaign", "abandon"]
        assert "unavailable" in str(recorded.of("abandon")[0][1]["reason"])
        await clock.run_for(10.0)
        assert recorded.triggers == ["campaign", "abandon"]  # no campaign without a vacancy
        election.vacant = True
        await clock.run_for(0.3)
        await elector.wait_leader()
        tg.cancel_scope.cancel()
    assert recorded.triggers == ["campaign", "abandon", "campaign", "elected", "resign"]


async def test_follower_reports_the_leader_it_sees() -> None:
    clock, election, recorded = scripted("lose")
    elector = elector_for(clock, election, recorded)
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        stats = elector.statistics()
        assert (stats.state, stats.leader_id, stats.fencing_token) == ("follower", "other", None)
        assert recorded.of("abandon")[0][1]["reason"] == "held by other"
        assert elector.healthy()
        tg.cancel_scope.cancel()


async def test_resign_stops_work_frees_the_seat_and_ends_run() -> None:
    clock, election, recorded = scripted("win")
    order: list[str] = []

    async def leader_only(term: LeaderTerm) -> None:
        order.append("work:start")
        try:
            await anyio.sleep_forever()
        finally:
            order.append("work:cancelled")

    def record(kind: str, attributes: Mapping[str, object]) -> None:
        order.append(f"event:{attributes['trigger']}")
        recorded(kind, attributes)

    elector = LeaderElector(election, [leader_only], record=record, clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        await anyio.wait_all_tasks_blocked()
        await elector.resign()
        order.append("resigned")
    assert order == [
        "event:campaign",
        "event:elected",
        "work:start",
        "work:cancelled",
        "event:resign",
        "resigned",
    ]
    assert recorded.of("resign")[0][1]["reason"] == "resigned"
    assert resigns(election) == ["resign:1"]


async def test_cancelling_run_while_leading_resigns() -> None:
    clock, election, recorded = scripted("win")
    elector = elector_for(clock, election, recorded)
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        tg.cancel_scope.cancel()
    assert recorded.triggers == ["campaign", "elected", "resign"]
    assert recorded.of("resign")[0][1]["reason"] == "cancelled"
    assert resigns(election) == ["resign:1"]


async def test_leader_work_crash_resigns_then_propagates() -> None:
    clock, election, recorded = scripted("win")

    async def broken(term: LeaderTerm) -> None:
        raise ValueError("bug in leader work")

    elector = elector_for(clock, election, recorded, broken)
    with pytest.RaisesGroup(ValueError, flatten_subgroups=True):
        async with anyio.create_task_group() as tg:
            await tg.start(elector.run)
    assert recorded.triggers == ["campaign", "elected", "resign"]
    assert recorded.of("resign")[0][1]["reason"] == "ValueError: bug in leader work"
    assert resigns(election) == ["resign:1"]


async def test_healthy_fails_when_leading_without_renewal() -> None:
    clock, election, recorded = scripted("win")
    elector = elector_for(clock, election, recorded)
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        stats = elector.statistics()
        assert stats.last_renew is not None
        deadline = election.timings.renew_deadline
        assert elector.healthy()
        assert elector.healthy(stats.last_renew + deadline - 0.01)
        assert not elector.healthy(stats.last_renew + deadline + 0.01)
        tg.cancel_scope.cancel()
    assert elector.healthy(clock.monotonic() + 1e6)  # not leading: nothing to be stale about


async def test_every_recorded_event_replays_through_the_chart() -> None:
    clock, election, recorded = scripted("down", "lose", "win")
    elector = elector_for(clock, election, recorded)
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        election.vacant = True
        await clock.run_for(1.0)
        await elector.wait_leader()
        tg.cancel_scope.cancel()
    machine = StateMachine(Statechart.load("leadership"))
    for _, attrs in recorded.events:
        assert machine.fire(str(attrs["trigger"])) == (attrs["from"], attrs["to"])
    assert recorded.triggers == [
        "campaign", "abandon", "campaign", "abandon", "campaign", "elected", "resign",
    ]  # fmt: skip


async def test_run_twice_at_once_and_late_work_are_refused() -> None:
    clock, election, recorded = scripted("lose")
    elector = elector_for(clock, election, recorded)

    async def late(term: LeaderTerm) -> None:
        pass

    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        with pytest.raises(RuntimeError, match="already running"):
            await elector.run()
        with pytest.raises(RuntimeError, match="after the elector has started"):
            elector.add_leader_work(late)
        tg.cancel_scope.cancel()
