"""Coarse timers (``routeiq.proxy.coarse_timers``): late by at most a tick, never early, and
with ``asyncio.timeout``'s cancellation semantics; and the disconnect watch that starts late."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import anyio
import pytest

from routeiq.proxy.coarse_timers import TICK_S, call_later, deadline
from routeiq.proxy.limits import DisconnectWatch

pytestmark = pytest.mark.anyio

# Generous for a busy machine: a timer must fire, and not much after its tick.
LATE_S = TICK_S + 1.0


async def test_a_deadline_times_out_the_block_after_its_delay_not_before() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError), deadline(0.2) as scope:
        await asyncio.sleep(30)
    elapsed = time.monotonic() - started
    assert scope.expired
    assert 0.2 <= elapsed < 0.2 + LATE_S, elapsed


async def test_a_block_that_ends_in_time_is_left_alone() -> None:
    with deadline(30) as scope:
        await asyncio.sleep(0)
    with deadline(None) as never:
        await asyncio.sleep(TICK_S * 3)  # ticks come and go with a timer that never fires
    assert not scope.expired and not never.expired
    # Nothing is left pending for the task: the next await is not cancelled.
    await asyncio.sleep(TICK_S * 3)


async def test_the_inner_of_two_deadlines_fires_and_the_outer_carries_on() -> None:
    with deadline(30) as outer:
        with pytest.raises(TimeoutError), deadline(0.1):
            await asyncio.sleep(30)
        await asyncio.sleep(0)
    assert not outer.expired


async def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout() -> None:
    entered = anyio.Event()
    outcome: list[str] = []

    async def guarded() -> None:
        try:
            with deadline(0.1):
                entered.set()
                await asyncio.sleep(30)
        except TimeoutError:
            outcome.append("timeout")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(guarded)
        await entered.wait()
        tg.cancel_scope.cancel()
    assert outcome == ["cancelled"]


async def test_an_outer_cancellation_at_the_deadline_still_cancels() -> None:
    # Both the deadline and an anyio scope cancel the task in the same tick: the scope's
    # cancellation wins, as it does over asyncio.timeout.
    with anyio.CancelScope() as scope:
        with deadline(0.1):
            scope.deadline = anyio.current_time() + 0.1
            await asyncio.sleep(30)
    assert scope.cancelled_caught


async def test_call_later_calls_once_after_its_delay_unless_cancelled() -> None:
    called: list[float] = []
    started = time.monotonic()
    call_later(0.1, lambda: called.append(time.monotonic() - started))
    call_later(0.1, lambda: called.append(-1.0)).cancel()
    await asyncio.sleep(0.1 + LATE_S)
    assert len(called) == 1
    assert 0.1 <= called[0] < 0.1 + LATE_S, called


async def test_a_late_disconnect_watch_sees_a_disconnect_that_came_before_it_started() -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await queue.put({"type": "http.disconnect"})  # gone before the watch started
    seen = anyio.Event()
    watch = DisconnectWatch(queue.get, seen.set, after_s=0.1)
    try:
        with anyio.fail_after(0.1 + LATE_S):
            await seen.wait()
    finally:
        watch.cancel()


async def test_a_disconnect_watch_cancelled_before_it_starts_never_reads() -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await queue.put({"type": "http.disconnect"})
    seen: list[bool] = []
    DisconnectWatch(queue.get, lambda: seen.append(True), after_s=0.05).cancel()
    await asyncio.sleep(0.05 + TICK_S * 4)
    assert seen == [] and queue.qsize() == 1


def test_the_timers_of_a_loop_do_not_keep_it_alive() -> None:
    async def use() -> None:
        with deadline(30):
            await asyncio.sleep(0)
        call_later(30, lambda: None).cancel()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(use())
    loop.close()
    closed = weakref.ref(loop)
    del loop
    gc.collect()
    assert closed() is None
