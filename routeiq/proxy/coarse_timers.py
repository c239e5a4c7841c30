"""Coarse timers for the request path: one event-loop timer for every request in flight.

Every API request needs a few timers that almost never fire: the body read's timeout, the
request's deadline, and the start of its disconnect watch. Measured here with callgrind on the
in-process request path, one ``asyncio.timeout`` costs ≈ 40k instructions (its ``TimerHandle``
goes into and out of the loop's heap, whose every comparison is a Python ``__lt__``), and the
disconnect watch's task ≈ 90k: together about a sixth of what the whole request cost.

Here a timer is an entry in a dict, and one loop timer, re-armed only while entries are due,
checks them every ``TICK_S``. So a timer fires up to ``TICK_S`` late, which no request timeout
(a second at least) and no disconnect (noticed to cancel an upstream call that takes seconds)
can tell. Everything here runs on the event loop's thread, like the rest of the request path.

- ``deadline(delay_s)``: a ``with`` block that raises ``TimeoutError`` once ``delay_s`` has
  passed, with ``asyncio.timeout``'s cancellation semantics (the task is cancelled, and the
  block turns only its own cancellation into ``TimeoutError``).
- ``call_later(delay_s, callback)``: ``callback()`` once ``delay_s`` has passed, unless
  ``cancel()`` came first.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from types import TracebackType

__all__ = ["TICK_S", "Deadline", "LaterCall", "call_later", "deadline"]

# How often due timers are checked, i.e. how late one may fire.
TICK_S = 0.05


class _Ticker:
    """The timers of one event loop (which it does not reference: it is the key it is kept by in
    a ``WeakKeyDictionary``, and is passed in)."""

    __slots__ = ("__weakref__", "_armed", "_due")

    def __init__(self) -> None:
        # key -> (when, callback); keys are the timer objects themselves.
        self._due: dict[object, tuple[float, Callable[[], None]]] = {}
        self._armed = False

    def add(
        self,
        loop: asyncio.AbstractEventLoop,
        key: object,
        delay_s: float,
        callback: Callable[[], None],
    ) -> None:
        self._due[key] = (loop.time() + delay_s, callback)
        if not self._armed:
            self._armed = True
            loop.call_later(TICK_S, self._tick, loop)

    def discard(self, key: object) -> None:
        self._due.pop(key, None)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        fired = [(key, callback) for key, (when, callback) in self._due.items() if when <= now]
        for key, _ in fired:
            del self._due[key]
        self._armed = bool(self._due)
        if self._armed:
            loop.call_later(TICK_S, self._tick, loop)
        for _, callback in fired:
            callback()


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = (
    weakref.WeakKeyDictionary()
)


def _ticker() -> tuple[asyncio.AbstractEventLoop, _Ticker]:
    loop = asyncio.get_running_loop()
    ticker = _tickers.get(loop)
    if ticker is None:
        ticker = _tickers[loop] = _Ticker()
    return loop, ticker


class Deadline:
    """See ``deadline``."""

    __slots__ = ("_cancelling", "_delay_s", "_expired", "_task", "_ticker")

    def __init__(self, delay_s: float | None) -> None:
        self._delay_s = delay_s
        self._expired = False

    @property
    def expired(self) -> bool:
        return self._expired

    def __enter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline is for code running in a task")
        self._task, self._cancelling = task, task.cancelling()
        loop, self._ticker = _ticker()
        if self._delay_s is not None:
            self._ticker.add(loop, self, max(self._delay_s, 0.0), self._expire)
        return self

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._ticker.discard(self)
        # As asyncio.timeout: only this deadline's own cancellation becomes TimeoutError.
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc


def deadline(delay_s: float | None) -> Deadline:
    """A ``with`` block that times out after ``delay_s`` (never, for ``None``); see the module."""
    return Deadline(delay_s)


class LaterCall:
    """See ``call_later``."""

    __slots__ = ("_ticker",)

    def __init__(self, delay_s: float, callback: Callable[[], None]) -> None:
        loop, self._ticker = _ticker()
        self._ticker.add(loop, self, delay_s, callback)

    def cancel(self) -> None:
        self._ticker.discard(self)


def call_later(delay_s: float, callback: Callable[[], None]) -> LaterCall:
    """Call ``callback()`` from the event loop once ``delay_s`` has passed (within ``TICK_S``),
    unless ``cancel()`` is called first."""
    return LaterCall(delay_s, callback)
