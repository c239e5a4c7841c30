"""The garbage collector's pauses as a metric, and freezing the heap startup allocated.

``GcPauseRecorder.install`` appends a callback to ``gc.callbacks`` that times every collection
(from its ``start`` to its ``stop`` phase); the pauses are observed in
``gateway_gc_pause_seconds{generation}`` on the event loop soon after (the callback runs inside
the collector, where taking prometheus_client's lock could deadlock). The returned function
removes the callback.

``freeze_startup_heap`` moves every object tracked so far into the collector's permanent
generation (``gc.freeze()``): litellm's import leaves ≈ 370k tracked objects, and a full
collection that walks them takes ≈ 260 ms, which was the whole latency tail under load. Frozen
objects are never collected (their reference counts still free them), so call it once, after
startup, when what exists is what the process keeps.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Histogram

__all__ = ["GcPauseRecorder", "freeze_startup_heap"]


class GcPauseRecorder:
    # Pauses waiting for the event loop; beyond this (no loop running), the oldest are dropped.
    MAX_PENDING = 4096

    def __init__(
        self, histogram: Histogram, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._histogram = histogram
        self._clock = clock
        self._started: float | None = None
        self._pending: list[tuple[int, float]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        # One child per generation, looked up once: the callback must stay cheap.
        self._children = {gen: histogram.labels(generation=str(gen)) for gen in range(3)}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        # Never touch the histogram here: a collection can start while this very thread holds
        # prometheus_client's lock (one global lock in multiprocess mode), and observing would
        # wait for it forever. Record, and let the event loop observe.
        if phase == "start":
            self._started = self._clock()
            return
        if self._started is None:
            return
        elapsed, self._started = self._clock() - self._started, None
        if len(self._pending) >= self.MAX_PENDING:
            del self._pending[0]
        self._pending.append((int(info.get("generation", 2)), elapsed))
        if self._loop is not None and not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self.flush)
            except RuntimeError:  # the loop is closed: keep the pauses for an explicit flush
                self._scheduled = False

    def flush(self) -> None:
        """Observe the recorded pauses (called on the event loop, or by hand)."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        for generation, elapsed in pending:
            child = self._children.get(generation)
            if child is not None:
                child.observe(elapsed)

    def install(self) -> Callable[[], None]:
        """Start recording; pauses are observed on the running event loop, if there is one."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        gc.callbacks.append(self)

        def remove() -> None:
            if self in gc.callbacks:
                gc.callbacks.remove(self)
            self._loop = None

        return remove


def freeze_startup_heap() -> int:
    """Freeze what is tracked now; returns how many objects the permanent generation holds."""
    gc.freeze()
    return gc.get_freeze_count()
