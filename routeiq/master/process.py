"""A worker process as the master sees it, and what the master does around ``fork``.

``WorkerProcess`` holds one child's pid, slot, state and the read end of its status pipe, and
parses the one JSON line the worker writes there (see ``routeiq.master.worker``). ``preload``
imports what every worker imports, ``preflight`` reports what the master holds right before a
fork, and ``describe_exit`` turns a ``waitpid`` status into words for events and messages.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import threading
from dataclasses import dataclass

__all__ = ["WorkerProcess", "describe_exit", "preflight", "preload"]

EXIT_CONFIG = 2
EXIT_FAILED = 3
STATUS_LINE_LIMIT = 65536


@dataclass
class WorkerProcess:
    slot: int
    pid: int
    worker_id: str
    status_fd: int | None
    exec_code: bool
    spawned_at: float
    state: str = "starting"  # starting → serving → draining
    for_reload: bool = False  # a SIGHUP replacement not yet ready
    retiring: bool = False  # told to drain; its exit is expected
    error: str | None = None
    error_code: int | None = None
    _buffer: bytes = b""

    def read_status(self) -> bool | None:
        """Read what the pipe holds: True once ready, False once failed (``error`` set), else
        None (nothing complete yet, or the worker closed the pipe without a word)."""
        fd = self.status_fd
        while fd is not None:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return None
            if not chunk:
                self.close_status()
                return None
            self._buffer += chunk
            if b"\n" in self._buffer or len(self._buffer) > STATUS_LINE_LIMIT:
                line = self._buffer.split(b"\n", 1)[0]
                self.close_status()
                return self._parse(line)
        return None

    def _parse(self, line: bytes) -> bool:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            message = {"error": f"unreadable status line {line[:200]!r}", "code": EXIT_FAILED}
        if message.get("ready") is True:
            return True
        self.error = str(message.get("error") or "no error given")
        self.error_code = EXIT_CONFIG if message.get("code") == EXIT_CONFIG else EXIT_FAILED
        return False

    def close_status(self) -> None:
        if self.status_fd is not None:
            os.close(self.status_fd)
            self.status_fd = None

    def kill(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # exited already; the reaper will see it
            os.kill(self.pid, signum)


def preload() -> None:
    """Import, once, what every worker imports: their pages are then shared copy-on-write."""
    from routeiq.routing.litellm_setup import import_litellm

    import_litellm()
    import hypercorn.asyncio  # noqa: F401
    import prometheus_client  # noqa: F401

    import routeiq.app
    import routeiq.assembly.gateway
    import routeiq.master.worker
    import routeiq.observability.tracing
    import routeiq.proxy.passthrough  # noqa: F401

    for name in WORKER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # another version of a dependency: less is shared, nothing breaks
            continue


# What a worker imports lazily while it starts and serves (measured: ≈ 330 modules after the
# fork: the MCP SDK, litellm's Router internals and integrations, the OpenTelemetry SDK, ...).
# Imported in the master, their pages are shared instead of private to every worker.
WORKER_MODULES = (
    "anyio._backends._asyncio",
    "transitions",
    "opentelemetry.sdk.resources",
    "opentelemetry.sdk._logs.export",
    "opentelemetry.sdk.metrics.export",
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.trace.propagation.tracecontext",
    "mcp",
    "mcp.client.streamable_http",
    "mcp.server.lowlevel.server",
    "mcp.server.streamable_http_manager",
    "mcp.server.subscriptions",
    "mcp.shared.exceptions",
    "mcp_types",
    "litellm._service_logger",
    "litellm.integrations.SlackAlerting.slack_alerting",
    "litellm.integrations.levo",
    "litellm.integrations.prometheus_services",
    "litellm.integrations.weave",
    "litellm.litellm_core_utils.logging_callback_manager",
    "litellm.llms.github_copilot",
    "litellm.llms.litellm_proxy",
    "litellm.proxy.guardrails",
    "litellm.router_rust.core",
    "litellm.router_rust.routing_stores",
    "litellm.router_strategy.budget_limiter",
    "litellm.router_strategy.lowest_cost",
    "litellm.router_strategy.lowest_latency",
    "litellm.router_strategy.lowest_tpm_rpm",
    "litellm.router_strategy.lowest_tpm_rpm_v2",
    "litellm.router_utils.routing_prefetch",
    "litellm.router_utils.request_priority",
    "litellm.router_utils.routing_read_batch",
    "litellm.rust_bridge.host",
    "litellm.rust_bridge.logger",
)


def preflight() -> dict[str, int]:
    """What the master holds right before a fork: threads, sockets, event-loop selectors.

    An asyncio loop would show as an epoll fd plus a socket pair (its self-pipe).
    """
    sockets = epolls = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd of the listing itself, closed by now
        sockets += target.startswith("socket:")
        epolls += target == "anon_inode:[eventpoll]"
    return {
        "master_threads": threading.active_count(),
        "master_sockets": sockets,
        "master_epoll_fds": epolls,
    }


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.WEXITSTATUS(status)}"
