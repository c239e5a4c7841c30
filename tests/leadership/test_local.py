"""LocalElection: flock leadership between real processes on this host."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from routeiq.errors import ConfigError, LeadershipLost
from routeiq.leadership import ElectionUnavailable, LeaderElector, LeaderTimings, LocalElection
from tests.leadership.helpers import Recorded

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REPO = Path(__file__).resolve().parents[2]
TIMINGS = LeaderTimings(2.0, 1.2, 0.1)

# A worker process: an elector on the shared lock file, printing each leadership event.
WORKER = """
import json, sys, anyio
from routeiq.leadership import ElectionUnavailable, LeaderElector, LeaderTimings, LocalElection

def record(kind, attributes):
    print(json.dumps(dict(attributes)), flush=True)

async def main():
    election = LocalElection(sys.argv[1], sys.argv[2], timings=LeaderTimings(2.0, 1.2, 0.1))
    async with election:
        await LeaderElector(election, record=record).run()

anyio.run(main)
"""


class Worker:
    def __init__(self, name: str, process: Process) -> None:
        assert process.stdout is not None
        self.name, self.process = name, process
        self._lines = BufferedByteReceiveStream(process.stdout)

    async def next_event(self) -> dict[str, object]:
        with anyio.fail_after(10):
            line = await self._lines.receive_until(b"\n", 65536)
        event: dict[str, object] = json.loads(line)
        return event

    async def outcome(self) -> dict[str, object]:
        """The next event that settles a campaign (elected or abandon)."""
        for _ in range(100):
            event = await self.next_event()
            if event["trigger"] in ("elected", "abandon"):
                return event
        raise AssertionError(f"{self.name} never settled a campaign")


@asynccontextmanager
async def workers(lock: Path, *names: str) -> AsyncIterator[list[Worker]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started: list[Worker] = []
    try:
        for name in names:
            process = await anyio.open_process(
                [sys.executable, "-c", WORKER, str(lock), name], env=env, stderr=None
            )
            started.append(Worker(name, process))
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for worker in started:
                if worker.process.returncode is None:
                    worker.process.kill()
                await worker.process.aclose()


async def test_one_of_two_processes_leads_and_the_other_takes_over_when_it_is_killed(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "leader.lock"
    async with workers(lock, "worker-a", "worker-b") as (a, b):
        first = {w.name: await w.outcome() for w in (a, b)}
        winners = [w for w in (a, b) if first[w.name]["trigger"] == "elected"]
        assert len(winners) == 1, first
        leader = winners[0]
        follower = b if leader is a else a
        token = first[leader.name]["fencing_token"]
        assert isinstance(token, int)
        # The winner names itself in the term file just after it takes the lock.
        assert first[follower.name]["reason"] in (
            f"held by {leader.name}",
            "held by another candidate",
        )

        # An observer in this process agrees: the seat is taken, by the winner.
        observer = LocalElection(lock, "observer", timings=TIMINGS)
        assert await observer.campaign() is None
        assert observer.leader_id == leader.name

        leader.process.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
        await leader.process.wait()
        took_over = await follower.outcome()
        assert took_over["trigger"] == "elected"
        assert took_over["leader_id"] == follower.name
        new_token = took_over["fencing_token"]
        assert isinstance(new_token, int)
        assert new_token > token


async def test_exactly_one_in_process_election_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "leader.lock"
    async with (
        LocalElection(lock, "a", timings=TIMINGS) as a,
        LocalElection(lock, "b", timings=TIMINGS) as b,
    ):
        term_a = await a.campaign()
        assert term_a is not None
        assert term_a.fencing_token == 1
        assert await b.campaign() is None
        assert b.leader_id == "a"
        assert not await b.wait_vacancy(0.01)
        await a.renew(term_a)
        await a.resign(term_a)
        assert await b.wait_vacancy(0.01)
        term_b = await b.campaign()
        assert term_b is not None
        assert term_b.fencing_token == 2
        with pytest.raises(LeadershipLost):
            await a.renew(term_a)


async def test_removing_the_lock_file_ends_the_term(tmp_path: Path) -> None:
    lock = tmp_path / "leader.lock"
    async with LocalElection(lock, "a", timings=TIMINGS) as a:
        term = await a.campaign()
        assert term is not None
        lock.unlink()
        with pytest.raises(LeadershipLost, match="removed or replaced"):
            await a.renew(term)
        assert a.leader_id is None


async def test_electors_in_one_process_share_the_seat(tmp_path: Path) -> None:
    lock = tmp_path / "leader.lock"
    recorded = Recorded()
    async with (
        LocalElection(lock, "a", timings=TIMINGS) as a,
        LocalElection(lock, "b", timings=TIMINGS) as b,
        anyio.create_task_group() as tg,
    ):
        first, second = LeaderElector(a, record=recorded), LeaderElector(b, record=recorded)
        await tg.start(first.run)
        await tg.start(second.run)
        assert (first.state, second.state) == ("leader", "follower")
        await first.resign()
        term = await second.wait_leader()
        assert term.fencing_token == 2
        assert term.holder_id == "b"
        tg.cancel_scope.cancel()


def test_candidate_id_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="candidate_id"):
        LocalElection(tmp_path / "leader.lock", "")


async def test_corrupt_term_file_refuses_to_restart_the_count(tmp_path: Path) -> None:
    lock = tmp_path / "leader.lock"
    (tmp_path / "leader.lock.term").write_text("{not json", encoding="utf-8")
    async with LocalElection(lock, "a", timings=TIMINGS) as a:
        with pytest.raises(ElectionUnavailable, match="delete it to restart the count"):
            await a.campaign()
