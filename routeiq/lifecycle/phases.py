"""The gateway's lifecycle: phases that nest on startup and unwind on drain or failure.

``Lifecycle.run`` walks ``created → configured → observing → patched → serving`` (each step a
transition event, each component's init an event with its duration), then waits for a drain
request, cancels the background services, waits for the HTTP server to release it, and unwinds
every phase in reverse order (``draining → stopped``). Each phase registers its own undo on one
``AsyncExitStack``, so a startup that fails or is cancelled half-way undoes exactly what it did;
teardown failures are recorded and do not stop the unwinding.

All lifecycle state is in the ``EventLog``; ``state``/``status()`` read a projection of it.

This module knows the statechart, the event log and the supervisor, and nothing of what the
phases build: a subclass supplies each phase (``routeiq.assembly.gateway.Gateway`` builds the
gateway's parts in them).
"""

from __future__ import annotations

import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager

import anyio
from anyio.abc import TaskStatus

from routeiq.errors import GatewayError, StartupError, describe
from routeiq.lifecycle.clock import Clock
from routeiq.lifecycle.events import EventKind, EventLog
from routeiq.lifecycle.projections import LifecycleProjection, LifecycleStatus, StartupTimeline
from routeiq.lifecycle.statechart import Statechart
from routeiq.lifecycle.supervisor import Supervisor

__all__ = ["STARTUP_PHASES", "Lifecycle", "StartupAborted"]

# The phases before ``serve``, each with the trigger that ends it.
STARTUP_PHASES: tuple[tuple[str, str], ...] = (
    ("configure", "configure"),
    ("observe", "observe"),
    ("patch", "patch"),
)


class StartupAborted(GatewayError):
    """A shutdown was requested during startup; the gateway unwound and stopped cleanly."""


class Lifecycle(ABC):
    """One lifecycle: its event log, its projections, and the order its phases run and unwind."""

    def __init__(self, *, clock: Clock, worker_id: str, unwind_timeout_s: float = 30.0) -> None:
        self.clock = clock
        self.worker_id = worker_id
        self.chart = Statechart.load("gateway")
        self.events = EventLog(clock, worker_id=worker_id)
        self._lifecycle = LifecycleProjection(self.chart)
        self.timeline = StartupTimeline()
        self.events.subscribe(self._lifecycle)
        self.events.subscribe(self.timeline)
        self.supervisor: Supervisor | None = None
        self._unwind_timeout_s = unwind_timeout_s
        self._drain_requested = anyio.Event()
        self._released = anyio.Event()
        self._startup_scope: anyio.CancelScope | None = None
        self._phase = "configure"
        self._closers: list[Callable[[], None]] = []

    # --- what a subclass supplies ----------------------------------------------------------------

    @abstractmethod
    async def _build(self, phase: str, undo: AsyncExitStack) -> None:
        """Build what ``phase`` (one of ``STARTUP_PHASES``) adds; register its undo on ``undo``."""

    @abstractmethod
    async def _serve(self, supervisor: Supervisor, undo: AsyncExitStack) -> None:
        """Start the background services under ``supervisor``, each once it is ready."""

    @abstractmethod
    def _serving(self) -> None:
        """Seal what must not change while serving; called once the gateway entered it."""

    @abstractmethod
    async def _resign(self) -> None:
        """Give up cluster roles; called when draining begins, before the background services
        are cancelled."""

    # --- projections -------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._lifecycle.state

    def status(self) -> LifecycleStatus:
        return self._lifecycle.status()

    # --- control (sync: none of these can block) -----------------------------------------------

    def request_drain(self) -> None:
        """Begin draining: readiness turns false now; startup, if running, is cancelled."""
        if self._drain_requested.is_set():
            return
        self._drain_requested.set()
        if self.state == "serving":
            self._fire("drain")
        elif self._startup_scope is not None:
            self._startup_scope.cancel()

    def release(self) -> None:
        """The HTTP server has finished in-flight requests: unwind and stop."""
        self.request_drain()
        self._released.set()

    async def wait_drained(self) -> None:
        await self._drain_requested.wait()

    # --- the lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[Lifecycle] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start up, report ready through ``task_status``, serve until released, then unwind.

        Raises ``StartupError`` if a phase failed and ``StartupAborted`` if a drain was
        requested before serving; in both cases everything started has been undone.
        """
        self.events.append(
            EventKind.CREATED,
            to_state=self.state,
            attributes={"process_uptime_s": _process_uptime()},
        )
        undo = AsyncExitStack()
        failure: StartupError | StartupAborted | None = None
        try:
            async with self._supervisor().running() as supervisor:
                self.supervisor = supervisor
                try:
                    await self._start(undo, supervisor)
                except (StartupError, StartupAborted) as exc:
                    # Raised outside the task group, so callers get it unwrapped.
                    failure = exc
                else:
                    task_status.started(self)
                    await self._drain_requested.wait()
                    if self.state == "serving":
                        self._fire("drain")
                    supervisor.stop_restarting()
                    with anyio.move_on_after(self._unwind_timeout_s, shield=True):
                        await self._resign()
                # Leaving the supervisor's block cancels the background services now, while
                # in-flight requests keep running on what the phases built.
            self._teardown_event("supervisor", ok=True)
            if failure is not None:
                raise failure
            await self._released.wait()
        finally:
            with anyio.move_on_after(self._unwind_timeout_s, shield=True):
                await undo.aclose()
            if self.state == "draining":
                self._fire("stop")
            for close in self._closers:
                close()

    async def _start(self, undo: AsyncExitStack, supervisor: Supervisor) -> None:
        with anyio.CancelScope() as scope:
            self._startup_scope = scope
            if self._drain_requested.is_set():
                scope.cancel()
            try:
                for phase, trigger in STARTUP_PHASES:
                    self._phase = phase
                    await self._build(phase, undo)
                    self._fire(trigger)
                self._phase = "serve"
                await self._serve(supervisor, undo)
            except Exception as exc:
                self._fire("fail", error=describe(exc), phase=self._phase)
                raise StartupError(self._phase, exc, redact=self.events.redactor) from exc
            finally:
                self._startup_scope = None
        if scope.cancelled_caught:
            if self.state == "created":
                self._fire(
                    "fail", error="shutdown requested before configuration", phase="configure"
                )
            else:
                self._fire("drain", phase=self._phase)
            raise StartupAborted(f"shutdown requested during phase {self._phase!r}")
        self._fire("serve")
        self._serving()

    # --- for the phases ----------------------------------------------------------------------

    def _close_last(self, close: Callable[[], None]) -> None:
        """Run ``close`` after the unwinding, in registration order: what must record the final
        transition (the event sink, logging) outlives every undo."""
        self._closers.append(close)

    def _supervisor(self) -> Supervisor:
        def give_up(service: str, reason: str) -> None:
            if self.state not in self.chart.terminal:
                self._fire("fail", error=reason, phase="supervisor", service=service)

        return Supervisor(self.events, clock=self.clock, on_give_up=give_up)

    def _fire(self, trigger: str, *, error: str | None = None, **attributes: str) -> None:
        self.chart.fire(self.events, self.state, trigger, error=error, attributes=attributes)

    @contextmanager
    def _component(self, name: str) -> Iterator[None]:
        start = self.clock.monotonic()
        try:
            yield
        except BaseException as exc:
            error = (
                "cancelled" if isinstance(exc, anyio.get_cancelled_exc_class()) else describe(exc)
            )
            self.events.append(
                EventKind.COMPONENT,
                component=name,
                duration_s=self.clock.monotonic() - start,
                ok=False,
                error=error,
                attributes={"phase": self._phase},
            )
            raise
        self.events.append(
            EventKind.COMPONENT,
            component=name,
            duration_s=self.clock.monotonic() - start,
            attributes={"phase": self._phase},
        )

    def _on_undo(self, undo: AsyncExitStack, name: str, fn: Callable[[], object]) -> None:
        async def run_undo() -> None:
            start = self.clock.monotonic()
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # collected, like aiohttp's cleanup_ctx: keep unwinding
                self._teardown_event(name, ok=False, error=describe(exc), start=start)
                return
            self._teardown_event(name, ok=True, start=start)

        undo.push_async_callback(run_undo)

    def _teardown_event(
        self, name: str, *, ok: bool, error: str | None = None, start: float | None = None
    ) -> None:
        self.events.append(
            EventKind.TEARDOWN,
            component=name,
            duration_s=None if start is None else self.clock.monotonic() - start,
            ok=ok,
            error=error,
        )


def _process_uptime() -> float:
    """Seconds since this process started (Linux /proc), so the timeline can show import time."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            system_uptime = float(uptime.read().split()[0])
        return round(system_uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return -1.0
