"""A supervisor for background services, on an anyio task group (Erlang/OTP-style policies).

Each service is ``async def run(*, task_status)`` and calls ``task_status.started()`` once it
is truly ready. Policies: ``permanent`` services are always restarted, ``transient`` ones only
after a crash, ``temporary`` ones never. Restarts back off exponentially; more than
``max_restarts`` restarts within ``window_s`` (across all services) exceeds the restart
intensity: the supervisor calls ``on_give_up`` and stops restarting, so the gateway turns
``failed`` instead of limping on. Every start, crash, exit and restart is an event.

The supervisor owns its task group; leaving ``running()`` cancels every service and waits for
them. A service that fails before its first ``started()`` makes ``start()`` raise: a service
that never came up is a startup failure, not something to retry in the background.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from routeiq.errors import GatewayError, describe
from routeiq.lifecycle.clock import Clock
from routeiq.lifecycle.events import EventKind, EventLog

__all__ = ["RestartPolicy", "Service", "Supervisor", "SupervisorStatistics"]

RestartPolicy = Literal["permanent", "transient", "temporary"]


class ServiceRun(Protocol):
    def __call__(self, *, task_status: TaskStatus[None] = ...) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    run: Callable[..., Awaitable[None]]
    policy: RestartPolicy = "permanent"


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    running: tuple[str, ...]
    restarts: int
    gave_up: bool


class Supervisor:
    def __init__(
        self,
        events: EventLog,
        *,
        clock: Clock,
        max_restarts: int = 5,
        window_s: float = 60.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        on_give_up: Callable[[str, str], None] | None = None,
    ) -> None:
        self._events = events
        self._clock = clock
        self.set_limits(
            max_restarts=max_restarts,
            window_s=window_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        )
        self._on_give_up = on_give_up
        self._restart_times: deque[float] = deque()
        self._tg: TaskGroup | None = None
        self._running: set[str] = set()
        self._restarts = 0
        self._gave_up = False
        self._names: set[str] = set()
        self._stopping = False

    def set_limits(
        self, *, max_restarts: int, window_s: float, backoff_initial_s: float, backoff_max_s: float
    ) -> None:
        if max_restarts < 0 or window_s <= 0 or backoff_initial_s < 0:
            raise ValueError("max_restarts >= 0, window_s > 0 and backoff_initial_s >= 0 required")
        if backoff_max_s < backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s

    def stop_restarting(self) -> None:
        """From now on a service that ends stays ended (the gateway is draining)."""
        self._stopping = True

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(tuple(sorted(self._running)), self._restarts, self._gave_up)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Supervisor]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def start(self, service: Service) -> None:
        """Start ``service`` and return once it reported ready."""
        if self._tg is None:
            raise GatewayError(
                "the supervisor is not running: use `async with supervisor.running()`"
            )
        if service.name in self._names:
            raise GatewayError(f"a service named {service.name!r} is already supervised")
        self._names.add(service.name)
        await self._tg.start(self._supervise, service)

    async def _supervise(self, service: Service, *, task_status: TaskStatus[None]) -> None:
        first = True
        attempt = 0
        while True:
            self._record(service, "starting", attempt=attempt)
            try:
                async with anyio.create_task_group() as inner:
                    await inner.start(_call_run, service.run)
                    self._running.add(service.name)
                    self._record(service, "started", attempt=attempt)
                    if first:
                        first = False
                        task_status.started()
                outcome, error = "exited", None
            except Exception as exc:
                if first:
                    cause = _unwrap(exc)
                    self._record(service, "crashed", error=describe(cause), attempt=attempt)
                    raise cause from None
                outcome, error = "crashed", describe(_unwrap(exc))
            finally:
                self._running.discard(service.name)
            self._record(service, outcome, error=error, attempt=attempt)
            if self._stopping:
                return
            if service.policy == "temporary" or (
                service.policy == "transient" and outcome == "exited"
            ):
                return
            if not self._allow_restart():
                self._gave_up = True
                reason = (
                    f"service {service.name!r} exceeded the restart intensity "
                    f"({self._max_restarts} restarts in {self._window_s:g}s); "
                    f"last: {error or outcome}"
                )
                self._record(service, "gave_up", error=reason, attempt=attempt)
                if self._on_give_up is not None:
                    self._on_give_up(service.name, reason)
                return
            delay = min(self._backoff_max_s, self._backoff_initial_s * (2**attempt))
            attempt += 1
            self._restarts += 1
            self._record(service, "restarting", attempt=attempt, backoff_s=delay)
            await self._clock.sleep(delay)

    def _allow_restart(self) -> bool:
        now = self._clock.monotonic()
        while self._restart_times and now - self._restart_times[0] > self._window_s:
            self._restart_times.popleft()
        if len(self._restart_times) >= self._max_restarts:
            return False
        self._restart_times.append(now)
        return True

    def _record(
        self,
        service: Service,
        what: str,
        *,
        error: str | None = None,
        attempt: int = 0,
        backoff_s: float | None = None,
    ) -> None:
        attributes: dict[str, str | int | float | bool | None] = {
            "policy": service.policy,
            "attempt": attempt,
        }
        if backoff_s is not None:
            attributes["backoff_s"] = backoff_s
        self._events.append(
            EventKind.SERVICE,
            trigger=what,
            component=service.name,
            ok=error is None,
            error=error,
            attributes=attributes,
        )


async def _call_run(run: Callable[..., Awaitable[None]], *, task_status: TaskStatus[None]) -> None:
    await run(task_status=task_status)


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
