"""GC pauses as a metric, and the startup heap frozen once serving."""

from __future__ import annotations

import gc

import anyio
import anyio.lowlevel
import pytest

from routeiq.observability.gc_pauses import GcPauseRecorder, freeze_startup_heap
from routeiq.observability.metrics import GatewayMetrics


def count(metrics: GatewayMetrics, generation: str) -> float:
    histogram = metrics.gateway_gc_pause_seconds.labels(generation=generation)
    return float(sum(b.get() for b in histogram._buckets))


def test_every_collection_is_timed_by_generation_until_removed() -> None:
    metrics = GatewayMetrics()
    ticks = iter([10.0, 10.25, 20.0, 20.001])
    recorder = GcPauseRecorder(metrics.gateway_gc_pause_seconds, clock=lambda: next(ticks))
    remove = recorder.install()
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        remove()
    # Inside the collector nothing is observed: prometheus_client's lock may be held right there.
    assert (count(metrics, "2"), count(metrics, "0")) == (0, 0)
    recorder.flush()
    assert (count(metrics, "2"), count(metrics, "0"), count(metrics, "1")) == (1, 1, 0)
    text = metrics.render()[0].decode()
    assert 'gateway_gc_pause_seconds_sum{generation="2"} 0.25' in text
    assert 'gateway_gc_pause_seconds_bucket{generation="2",le="0.25"} 1.0' in text
    gc.collect(0)  # removed: nothing more is recorded (the clock would run out)
    recorder.flush()
    assert count(metrics, "0") == 1


@pytest.mark.anyio
async def test_pauses_reach_the_histogram_through_the_event_loop() -> None:
    metrics = GatewayMetrics()
    recorder = GcPauseRecorder(metrics.gateway_gc_pause_seconds)
    remove = recorder.install()
    try:
        gc.collect(1)
        for _ in range(10):
            if count(metrics, "1"):
                break
            await anyio.lowlevel.checkpoint()
    finally:
        remove()
    assert count(metrics, "1") >= 1


def test_freeze_moves_what_exists_out_of_the_collectors_reach() -> None:
    try:
        kept = [[i] for i in range(1000)]
        frozen = freeze_startup_heap()
        assert frozen >= len(kept)
        probe = kept[0]
        assert gc.is_tracked(probe)
        assert all(o is not probe for o in gc.get_objects()), "a frozen object is still collected"
    finally:
        gc.unfreeze()
