"""Startup hooks and services used by tests through RouteIQ's real ``routeiq.hooks`` seam.

Recorded steps go to ``RECORD`` (in-process) and, when ``ROUTEIQ_TEST_RECORD`` names a file,
to that file (one step per line) so tests of server processes can read them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from routeiq.lifecycle.hooks import HookContext

RECORD: list[str] = []
GATES: dict[str, anyio.Event] = {}


def _record(step: str) -> None:
    RECORD.append(step)
    path = os.environ.get("ROUTEIQ_TEST_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(step + "\n")


def record(ctx: HookContext) -> object:
    """Records ``enter:<name>`` now and ``exit:<name>`` when the gateway unwinds it."""
    _record(f"enter:{ctx.name}")

    @asynccontextmanager
    async def undo() -> AsyncIterator[None]:
        yield
        _record(f"exit:{ctx.name}")

    return undo()


def fail(ctx: HookContext) -> None:
    raise RuntimeError(f"injected failure in phase {ctx.phase}")


async def slow(ctx: HookContext) -> None:
    """Sleeps ROUTEIQ_TEST_SLOW_S seconds (a slow component), announcing itself first."""
    _record(f"slow:{ctx.name}")
    await anyio.sleep(float(os.environ.get("ROUTEIQ_TEST_SLOW_S", "30")))


async def gate(ctx: HookContext) -> None:
    """Blocks until the test sets ``GATES[ctx.phase]`` (in-process only)."""
    _record(f"gate:{ctx.phase}")
    await GATES.setdefault(ctx.phase, anyio.Event()).wait()


async def steady_service(ctx: HookContext, *, task_status: TaskStatus[None]) -> None:
    _record(f"service-start:{ctx.name}")
    task_status.started()
    try:
        await anyio.sleep_forever()
    finally:
        _record(f"service-stop:{ctx.name}")


async def crashing_service(ctx: HookContext, *, task_status: TaskStatus[None]) -> None:
    """Ready at once, then crashes: with a restart policy the supervisor keeps restarting it."""
    task_status.started()
    _record(f"service-crash:{ctx.name}")
    await anyio.lowlevel.checkpoint()
    raise RuntimeError("service crashed on purpose")


def fail_with_secret(ctx: HookContext) -> None:
    """Fails with the master key in its message: the event log must never show it."""
    raise RuntimeError(f"injected failure in phase {ctx.phase} (key {ctx.config.master_key})")


def fail_with_etcd_password(ctx: HookContext) -> None:
    """Fails with the etcd password in its message: no event, log or error may show it."""
    password = ctx.config.routeiq.leadership.etcd_password
    shown = None if password is None else password.get_secret_value()
    raise RuntimeError(f"injected failure in phase {ctx.phase} (etcd password {shown})")
