"""The ASGI entry point: ``hypercorn routeiq.app:app``.

``app`` is a plain ASGI callable. Importing this module reads no env, opens no file or socket
and imports no litellm: every bit of work happens in the ASGI lifespan, which runs a fresh
``Gateway`` through its statechart. Each ``GatewayApp`` instance is independent, so several can
live in one process (tests do this).

hypercorn's master process exits 0 when a worker's lifespan startup fails, and prints the
worker's traceback. So by default a failed startup here prints one readable line and ends the
worker process with a non-zero code after unwinding; ``routeiq serve`` (which owns the process)
reports the failure itself and exits non-zero.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import anyio

from routeiq.assembly.gateway import Gateway
from routeiq.errors import ConfigError, StartupError
from routeiq.http.routes import build_http_app
from routeiq.lifecycle.clock import Clock
from routeiq.lifecycle.phases import StartupAborted
from routeiq.proxy.limits import RequestGuard

__all__ = ["EXIT_CONFIG", "EXIT_STARTUP", "GatewayApp", "app", "create_app"]

EXIT_CONFIG = 2
EXIT_STARTUP = 3

Scope = MutableMapping[str, Any]


class GatewayApp:
    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        config_path: Path | None = None,
        clock: Clock | None = None,
        exit_on_startup_failure: bool = True,
    ) -> None:
        self._env = env
        self._config_path = config_path
        self._clock = clock
        self._exit_on_startup_failure = exit_on_startup_failure
        self.gateway: Gateway | None = None
        self.startup_error: BaseException | None = None
        http = build_http_app(self)
        self._http = RequestGuard(http.app, self, hot=http.hot)

    def new_gateway(self) -> Gateway:
        return Gateway(env=self._env, config_path=self._config_path, clock=self._clock)

    async def drain_on(
        self, signals: AsyncIterator[int], *, delay_s: float, close_listener: anyio.Event
    ) -> None:
        """Drain at the first of ``signals``: readiness turns 503 at once, and the listener closes
        (``close_listener``) after ``delay_s``, or at once on a second signal or before startup."""
        async for _ in signals:
            if self.gateway is None:
                close_listener.set()
                return
            self.gateway.request_drain()
            with anyio.move_on_after(delay_s):
                async for _ in signals:
                    break  # a second signal: close now
            close_listener.set()
            return

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self._http(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        gateway = self.new_gateway()
        self.gateway = gateway
        failure: StartupError | StartupAborted | None = None
        async with anyio.create_task_group() as tg:
            try:
                await tg.start(gateway.run)
            except (StartupError, StartupAborted) as exc:
                failure = exc
            else:
                await send({"type": "lifespan.startup.complete"})
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.shutdown":
                        break
                gateway.release()
        if failure is not None:
            # Reported outside the task group: servers raise from ``send`` on this message.
            self.startup_error = failure
            if isinstance(failure, StartupError) and self._exit_on_startup_failure:
                _exit_readably(failure)
            await send({"type": "lifespan.startup.failed", "message": str(failure)})
            return
        await send({"type": "lifespan.shutdown.complete"})


def _exit_readably(exc: StartupError) -> None:
    code = EXIT_CONFIG if isinstance(exc.cause, ConfigError) else EXIT_STARTUP
    cause = exc.cause.render() if isinstance(exc.cause, ConfigError) else str(exc)
    sys.stderr.write(f"routeiq: {cause}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    # The gateway has already unwound everything it started (events are flushed per line).
    os._exit(code)


def create_app(
    *,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    clock: Clock | None = None,
    exit_on_startup_failure: bool = True,
) -> GatewayApp:
    return GatewayApp(
        env=env,
        config_path=config_path,
        clock=clock,
        exit_on_startup_failure=exit_on_startup_failure,
    )


app = create_app()
