"""``routeiq serve``: hypercorn run programmatically, with RouteIQ owning the signals.

On SIGTERM (or SIGINT) the gateway starts draining at once, so ``/health/ready`` turns 503
while the listener still accepts; after ``drain.delay_s`` (time for a load balancer to notice)
the listener closes; in-flight requests then have ``drain.timeout_s`` to finish before the
lifespan unwinds and the gateway stops. A second signal skips the remaining delay. A signal
during startup unwinds what was started and exits 0.

Exit codes: 0 after a clean stop, 2 for an invalid config, 3 when startup failed otherwise or
the gateway ended ``failed``.

With ``workers > 1`` (or ``master=True``) a prefork master runs the workers instead: see
``routeiq.master``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio

from routeiq.app import EXIT_CONFIG, EXIT_STARTUP, GatewayApp
from routeiq.config.loader import load_config
from routeiq.errors import ConfigError, StartupError
from routeiq.master import Arbiter
from routeiq.proxy.limits import listen_backlog

__all__ = ["serve"]


def serve(
    *,
    bind: str,
    env: Mapping[str, str],
    config_path: Path | None = None,
    workers: int = 1,
    master: bool = False,
) -> int:
    if workers > 1 or master:
        host, _, port = bind.rpartition(":")
        return Arbiter(
            workers=workers, host=host.strip("[]"), port=int(port), env=env, config_path=config_path
        ).run()
    # Read the drain timings before starting; a bad config is reported by the lifespan too,
    # but hypercorn's graceful timeout must be known when it is configured.
    try:
        routeiq = load_config(env, config_path).routeiq
    except ConfigError as exc:
        sys.stderr.write(f"routeiq: {exc.render()}\n")
        return EXIT_CONFIG
    settings = routeiq.drain
    backlog = listen_backlog(routeiq.limits)
    return anyio.run(_serve, bind, env, config_path, settings.delay_s, settings.timeout_s, backlog)


async def _serve(
    bind: str,
    env: Mapping[str, str],
    config_path: Path | None,
    delay_s: float,
    timeout_s: float,
    backlog: int,
) -> int:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config
    from hypercorn.utils import LifespanFailureError

    app = GatewayApp(env=env, config_path=config_path, exit_on_startup_failure=False)
    config = Config()
    config.bind = [bind]
    config.backlog = backlog
    config.graceful_timeout = timeout_s
    config.accesslog = None
    config.startup_timeout = 600
    config.shutdown_timeout = timeout_s + 30
    close_listener = anyio.Event()

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await app.drain_on(signals, delay_s=delay_s, close_listener=close_listener)

    code = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals)
        try:
            await hypercorn_serve(app, config, shutdown_trigger=close_listener.wait)  # type: ignore[arg-type]
        except LifespanFailureError:
            code = _startup_exit_code(app)
        tg.cancel_scope.cancel()
    gateway = app.gateway
    if code == 0 and gateway is not None and gateway.state == "failed":
        sys.stderr.write(f"routeiq: the gateway ended failed: {gateway.status().error}\n")
        code = EXIT_STARTUP
    return code


def _startup_exit_code(app: GatewayApp) -> int:
    error = app.startup_error
    if isinstance(error, StartupError):
        cause = error.cause
        sys.stderr.write(
            f"routeiq: {cause.render() if isinstance(cause, ConfigError) else error}\n"
        )
        return EXIT_CONFIG if isinstance(cause, ConfigError) else EXIT_STARTUP
    if app.gateway is not None and app.gateway.state == "stopped":
        return 0  # a shutdown signal arrived during startup: unwound cleanly
    sys.stderr.write(f"routeiq: startup did not complete: {error}\n")
    return EXIT_STARTUP
