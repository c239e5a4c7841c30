"""EtcdElection and LeaderElector against a real etcd server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aetcd
import anyio
import pytest

from routeiq.errors import ConfigError, LeadershipLost
from routeiq.leadership import EtcdElection, LeaderElector, LeaderTerm, LeaderTimings, LeaderWork
from tests.leadership.helpers import Recorded
from tests.support.etcd import EtcdServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

TIMINGS = LeaderTimings(lease_duration=2, renew_deadline=1.2, retry_period=0.3)
KEY = "/routeiq/test/leader"
DATA = "/routeiq/test/data"


@pytest.fixture(scope="module", autouse=True)
async def one_event_loop_for_grpc() -> AsyncIterator[None]:
    """grpc.aio binds to every event loop it sees, and a call cancelled just before a loop
    closes completes later into the closed loop, failing whichever test runs then. So this
    module shares one loop, and gives grpc a moment to deliver those completions at the end."""
    yield
    await anyio.sleep(0.2)


@dataclass
class Candidate:
    election: EtcdElection
    elector: LeaderElector
    recorded: Recorded = field(default_factory=Recorded)

    @property
    def name(self) -> str:
        return self.election.candidate_id


@dataclass
class Cluster:
    candidates: list[Candidate]

    def leaders(self) -> list[Candidate]:
        return [c for c in self.candidates if c.elector.state == "leader"]

    async def wait_one_leader(self, newer_than: int = 0) -> Candidate:
        """Wait (bounded) until exactly one candidate leads, in a term newer than ``newer_than``."""
        with anyio.fail_after(10):
            while True:
                leaders = self.leaders()
                if len(leaders) == 1:
                    term = leaders[0].elector.term
                    if term is not None and term.fencing_token > newer_than:
                        return leaders[0]
                async with anyio.create_task_group() as tg:
                    for candidate in self.candidates:
                        seen = len(candidate.recorded.events)
                        tg.start_soon(_next_change, candidate, seen + 1, tg.cancel_scope)


async def _next_change(candidate: Candidate, count: int, scope: anyio.CancelScope) -> None:
    await candidate.recorded.wait_events(count)
    scope.cancel()


@asynccontextmanager
async def cluster(
    server: EtcdServer, names: Sequence[str], work: Sequence[LeaderWork] = ()
) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        candidates = []
        for name in names:
            election = EtcdElection(
                name, host=server.host, port=server.port, key=KEY, timings=TIMINGS
            )
            await stack.enter_async_context(election)
            recorded = Recorded()
            candidates.append(
                Candidate(election, LeaderElector(election, work, record=recorded), recorded)
            )
        tg = await stack.enter_async_context(anyio.create_task_group())
        for candidate in candidates:
            await tg.start(candidate.elector.run)
        yield Cluster(candidates)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def admin(server: EtcdServer) -> AsyncIterator[aetcd.Client]:
    client = aetcd.Client(host=server.host, port=server.port, timeout=5)
    async with client:
        yield client


async def test_exactly_one_leader_and_etcd_agrees(etcd: EtcdServer) -> None:
    async with cluster(etcd, ["a", "b", "c"]) as group, admin(etcd) as client:
        [leader] = group.leaders()
        term = leader.elector.term
        assert term is not None
        kv = await client.get(KEY.encode())
        assert kv.value.decode() == leader.election.candidate_id
        assert kv.create_revision == term.fencing_token
        for other in group.candidates:
            if other is not leader:
                stats = other.elector.statistics()
                assert (stats.state, stats.leader_id) == ("follower", term.holder_id)


async def test_resign_hands_over_without_waiting_for_the_lease(etcd: EtcdServer) -> None:
    async with cluster(etcd, ["a", "b", "c"]) as group:
        [old] = group.leaders()
        old_term = old.elector.term
        assert old_term is not None
        resigned_at = anyio.current_time()
        await old.elector.resign()
        new = await group.wait_one_leader(newer_than=old_term.fencing_token)
        elected_at, elected = new.recorded.of("elected")[-1]
        assert elected_at - resigned_at < TIMINGS.lease_duration
        token = elected["fencing_token"]
        assert isinstance(token, int)
        assert token > old_term.fencing_token
        assert old.elector.state == "follower"  # and it stays out: run() has returned


async def test_deposed_leader_is_fenced_and_steps_down(etcd: EtcdServer) -> None:
    ready, go = anyio.Event(), anyio.Event()
    terms: list[LeaderTerm] = []
    work_ended: list[str] = []
    send_written, written = anyio.create_memory_object_stream[str](10)

    async def leader_only(term: LeaderTerm) -> None:
        terms.append(term)
        await ready.wait()
        election = next(c.election for c in group.candidates if c.elector.term == term)
        await election.fenced_put(DATA, f"written by {term.holder_id}")
        await send_written.send(term.holder_id)
        try:
            if term != terms[0]:
                await anyio.sleep_forever()
            await go.wait()
            await election.fenced_put(DATA, "written after deposition")
        finally:
            work_ended.append(term.holder_id)

    async with (
        written,
        send_written,
        cluster(etcd, ["a", "b"], [leader_only]) as group,
        admin(etcd) as client,
    ):
        ready.set()
        [old] = group.leaders()
        old_term = old.elector.term
        assert old_term is not None
        with anyio.fail_after(5):
            assert await written.receive() == old_term.holder_id
        assert (await client.get(DATA.encode())).value.decode() == f"written by {old.name}"

        kv = await client.get(KEY.encode())
        await client.revoke_lease(kv.lease)  # etcd deposes the leader behind its back
        go.set()
        _, lost = await old.recorded.wait_for("lose")
        assert "fencing token" in str(lost["reason"])
        assert work_ended[0] == old_term.holder_id

        new = await group.wait_one_leader(newer_than=old_term.fencing_token)
        new_term = new.elector.term
        assert new_term is not None
        assert new_term.fencing_token > old_term.fencing_token
        with anyio.fail_after(5):
            assert await written.receive() == new_term.holder_id
        assert (await client.get(DATA.encode())).value.decode() == f"written by {new.name}"
        with pytest.raises(LeadershipLost):
            await old.election.fenced_put(DATA, "stale", term=old_term)
        with pytest.raises(LeadershipLost):
            await old.election.fenced_delete(DATA, term=old_term)
        assert (await client.get(DATA.encode())).value.decode() == f"written by {new.name}"


async def test_revoked_lease_is_noticed_at_the_next_renewal(etcd: EtcdServer) -> None:
    async with cluster(etcd, ["a"]) as group, admin(etcd) as client:
        [leader] = group.leaders()
        kv = await client.get(KEY.encode())
        await client.revoke_lease(kv.lease)
        _, lost = await leader.recorded.wait_for("lose")
        assert "expired or was revoked" in str(lost["reason"])
        # The seat is empty now, so the same candidate campaigns again.
        with anyio.fail_after(10):
            term = await leader.elector.wait_leader()
        assert term.fencing_token > kv.create_revision


@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_etcd_outage_leader_steps_down_before_the_lease_expires(
    etcd: EtcdServer, outage: str
) -> None:
    work_ended: list[float] = []

    async def leader_only(term: LeaderTerm) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            work_ended.append(anyio.current_time())

    async with cluster(etcd, ["a", "b"], [leader_only]) as group:
        [old] = group.leaders()
        await anyio.to_thread.run_sync(getattr(etcd, outage))
        lost_at, lost = await old.recorded.wait_for("lose")
        last_renew = old.elector.statistics().last_renew
        assert last_renew is not None
        assert "renew_deadline" in str(lost["reason"])
        # Work stopped, then the loss was reported, before the lease could expire in etcd.
        assert work_ended
        assert work_ended[0] <= lost_at < last_renew + TIMINGS.lease_duration
        assert not group.leaders()
        assert all(c.elector.healthy() for c in group.candidates)

        await anyio.to_thread.run_sync(etcd.start)
        leader = await group.wait_one_leader()
        async with admin(etcd) as client:
            kv = await client.get(KEY.encode())
        assert kv.value.decode() == leader.election.candidate_id
        assert leader.elector.term is not None
        assert kv.create_revision == leader.elector.term.fencing_token


async def test_etcd_down_at_start_means_follower_then_leader_when_it_returns(
    etcd: EtcdServer,
) -> None:
    await anyio.to_thread.run_sync(etcd.stop)
    async with cluster(etcd, ["a"]) as group:
        [only] = group.candidates
        assert only.elector.state == "follower"
        assert "unavailable" in str(only.recorded.of("abandon")[0][1]["reason"])
        await anyio.to_thread.run_sync(etcd.start)
        with anyio.fail_after(10):
            await only.elector.wait_leader()


def test_timings_are_validated_with_the_fields_named() -> None:
    with pytest.raises(ConfigError, match="lease_duration: must be greater than renew_deadline"):
        LeaderTimings(lease_duration=1, renew_deadline=1.2, retry_period=0.3)
    with pytest.raises(ConfigError, match="renew_deadline: must be greater than retry_period"):
        LeaderTimings(lease_duration=2, renew_deadline=0.3, retry_period=0.3)
    with pytest.raises(ConfigError) as raised:
        LeaderTimings(lease_duration=0, renew_deadline=-1, retry_period="2")  # type: ignore[arg-type]
    assert [path for path, _ in raised.value.problems] == [
        "lease_duration",
        "renew_deadline",
        "retry_period",
    ]
    with pytest.raises(ConfigError, match="lease_duration: etcd leases last whole seconds"):
        EtcdElection("a", timings=LeaderTimings(2.5, 1.2, 0.3))
    with pytest.raises(ConfigError) as raised:
        EtcdElection("", key="", timings=TIMINGS, request_timeout=5)
    assert [path for path, _ in raised.value.problems] == ["candidate_id", "key", "request_timeout"]
