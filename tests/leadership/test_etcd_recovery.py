"""Prompt recovery: after a long etcd outage the seat is campaigned for within a retry period.

grpc's reconnect backoff grows while etcd is away (1 s, 1.6 s, 2.6 s… up to two minutes): with
the defaults, a 30 s outage left the seat empty for about 5 s after etcd was healthy again. The
election bounds the backoff and probes the seat a few times per retry period. This test stops
a real etcd for 30 s, so it is ``slow``; it prints the measured delay.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from routeiq.leadership import EtcdElection, LeaderElector, LeaderTimings
from tests.leadership.helpers import Recorded
from tests.support.etcd import EtcdServer

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(120)]

TIMINGS = LeaderTimings(lease_duration=3, renew_deadline=2, retry_period=1)
OUTAGE_S = 30.0
# What a loaded 2-core box may add: grpc's backoff jitter (±20 %), the campaign's two round
# trips, scheduling. Without the bound the delay after a 30 s outage is several seconds.
SLACK_S = 1.0


@pytest.fixture(scope="module", autouse=True)
async def one_event_loop_for_grpc() -> AsyncIterator[None]:
    yield
    await anyio.sleep(0.2)


async def test_the_first_campaign_after_a_30s_outage_comes_within_a_retry_period(
    etcd: EtcdServer,
) -> None:
    recorded = Recorded()
    async with (
        EtcdElection("a", endpoint=etcd.client_endpoint(), timings=TIMINGS) as election,
        anyio.create_task_group() as tg,
    ):
        elector = LeaderElector(election, record=recorded)
        await tg.start(elector.run)
        with anyio.fail_after(10):
            await elector.wait_leader()
        await anyio.to_thread.run_sync(etcd.stop)
        await recorded.wait_for("lose")
        await anyio.sleep(OUTAGE_S)  # the outage itself: grpc's backoff grows meanwhile
        await anyio.to_thread.run_sync(etcd.start)  # returns once etcd answers /health
        back = anyio.current_time()
        with anyio.fail_after(30):
            await elector.wait_leader()
        campaigns = [t for t, e in recorded.of("campaign") if t >= back]
        elected_at, _ = recorded.of("elected")[-1]
        first = campaigns[0] if campaigns else elected_at
        print(
            f"\netcd back after {OUTAGE_S:.0f}s: first campaign {first - back:.3f}s later, "
            f"leader {elected_at - back:.3f}s later (retry period {TIMINGS.retry_period}s)"
        )
        assert first - back <= TIMINGS.retry_period + SLACK_S
        await elector.resign()
