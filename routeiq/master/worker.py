"""One worker of a process group: a full ``Gateway`` served by hypercorn on an inherited socket.

The master hands a worker two file descriptors: the listening socket it bound (shared by every
worker: the kernel spreads connections between the processes that accept on it) and the write
end of a status pipe. The worker writes exactly one JSON line to that pipe: ``{"ready": true}``
once its gateway is ``serving`` and hypercorn accepts on the socket, or ``{"error": …, "code":
2|3}`` when its startup failed (2: the config is invalid). The master knows readiness only from
this line: it cannot poll ``/health/ready`` through a socket shared by every worker.

Signals: SIGTERM drains (readiness 503 at once; after ``drain.delay_s`` this worker stops
accepting, and connections it accepted just before get ``ACCEPTED_GRACE_S`` to send their
request; in-flight requests get ``drain.timeout_s``, then the phases unwind); a second SIGTERM
skips the rest of the delay. SIGINT and SIGHUP are ignored: a terminal sends them to the whole
process group, and the master relays what each worker should do.

A worker forked from the master runs ``run_worker`` directly, on the master's preloaded and
frozen heap; after a SIGHUP the master starts workers as ``python -m routeiq.master.worker``
instead, so that they run the code on disk (see ``routeiq.master.arbiter``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import anyio

from routeiq.app import EXIT_CONFIG, EXIT_STARTUP, GatewayApp
from routeiq.config.loader import load_config
from routeiq.errors import ConfigError, StartupError

__all__ = ["run_worker"]

# How long connections accepted right before the listener closed get to send their request.
ACCEPTED_GRACE_S = 0.5


def run_worker(
    *,
    listen_fd: int,
    status_fd: int,
    env: Mapping[str, str],
    config_path: Path | None,
    backlog: int,
) -> int:
    """Serve until drained; returns the process exit code (0, 2 for config, 3 otherwise)."""
    status = _StatusPipe(status_fd)
    try:
        drain = load_config(env, config_path).routeiq.drain
    except ConfigError as exc:
        return status.failed(exc.render(), EXIT_CONFIG)
    return anyio.run(
        _serve, listen_fd, status, env, config_path, backlog, drain.delay_s, drain.timeout_s
    )


class _StatusPipe:
    """The write end of the master's status pipe: one line, then closed."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def _send(self, message: Mapping[str, Any]) -> bool:
        if self._fd is None:
            return False
        fd, self._fd = self._fd, None
        try:
            os.write(fd, (json.dumps(message) + "\n").encode())
        except OSError:
            return False  # the master is gone
        finally:
            os.close(fd)
        return True

    def ready(self) -> None:
        self._send({"ready": True, "pid": os.getpid()})

    def failed(self, message: str, code: int) -> int:
        """Tell the master (which prints it once for the group); stderr if it cannot hear."""
        if not self._send({"error": message, "code": code}):
            sys.stderr.write(f"routeiq: {message}\n")
            sys.stderr.flush()
        return code

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def _serve(
    listen_fd: int,
    status: _StatusPipe,
    env: Mapping[str, str],
    config_path: Path | None,
    backlog: int,
    delay_s: float,
    timeout_s: float,
) -> int:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config
    from hypercorn.utils import LifespanFailureError

    app = GatewayApp(env=env, config_path=config_path, exit_on_startup_failure=False)
    config = Config()
    config.bind = [f"fd://{listen_fd}"]
    # asyncio re-listens on the shared socket with this backlog: keep the master's.
    config.backlog = backlog
    config.graceful_timeout = timeout_s
    config.accesslog = None
    config.startup_timeout = 600
    config.shutdown_timeout = timeout_s + 30
    close_listener = anyio.Event()

    async def serving_until_closed() -> None:
        # hypercorn awaits its shutdown trigger only once its servers accept: ready now.
        status.ready()
        await close_listener.wait()
        # hypercorn's shutdown closes every connection that has not sent a request yet, so a
        # connection accepted a moment earlier would be dropped unanswered. Stop accepting
        # first (the socket stays open: the other workers accept what arrives from now on),
        # then give what was just accepted a moment to send its request.
        asyncio.get_running_loop().remove_reader(listen_fd)
        await anyio.sleep(ACCEPTED_GRACE_S)

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            await app.drain_on(signals, delay_s=delay_s, close_listener=close_listener)

    code = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals)
        try:
            await hypercorn_serve(app, config, shutdown_trigger=serving_until_closed)  # type: ignore[arg-type]
        except LifespanFailureError:
            code = _startup_failure(app, status)
        tg.cancel_scope.cancel()
    status.close()
    gateway = app.gateway
    if code == 0 and gateway is not None and gateway.state == "failed":
        sys.stderr.write(f"routeiq: the gateway ended failed: {gateway.status().error}\n")
        code = EXIT_STARTUP
    return code


def _startup_failure(app: GatewayApp, status: _StatusPipe) -> int:
    error = app.startup_error
    if isinstance(error, StartupError):
        cause = error.cause
        if isinstance(cause, ConfigError):
            return status.failed(cause.render(), EXIT_CONFIG)
        return status.failed(str(error), EXIT_STARTUP)
    if app.gateway is not None and app.gateway.state == "stopped":
        status.close()
        return 0  # told to drain during startup: unwound cleanly
    return status.failed(f"startup did not complete: {error}", EXIT_STARTUP)


def main(argv: list[str] | None = None, environ: MutableMapping[str, str] | None = None) -> int:
    """``python -m routeiq.master.worker``: a worker started by a master after a SIGHUP."""
    parser = argparse.ArgumentParser(prog="routeiq-worker")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--backlog", type=int, required=True)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    return run_worker(
        listen_fd=args.listen_fd,
        status_fd=args.status_fd,
        env=os.environ if environ is None else environ,
        config_path=args.config,
        backlog=args.backlog,
    )


if __name__ == "__main__":
    sys.exit(main())
