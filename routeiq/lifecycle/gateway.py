"""The gateway's lifecycle: phases that nest on startup and unwind on drain or failure.

``Gateway.run`` walks ``created → configured → observing → patched → serving`` (each step a
transition event, each component's init an event with its duration), then waits for a drain
request, cancels the background services, waits for the HTTP server to release it, and unwinds
every phase in reverse order (``draining → stopped``). Each phase registers its own undo on one
``AsyncExitStack``, so a startup that fails or is cancelled half-way undoes exactly what it did;
teardown failures are recorded and do not stop the unwinding.

All lifecycle state is in the ``EventLog``; ``state``/``status()`` read a projection of it.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from routeiq.config.loader import load_config
from routeiq.config.model import GatewayConfig
from routeiq.errors import GatewayError, StartupError, describe
from routeiq.lifecycle.clock import Clock, SystemClock
from routeiq.lifecycle.events import EventKind, EventLog, JsonlSink
from routeiq.lifecycle.hooks import HookContext, resolve_callable
from routeiq.lifecycle.projections import LifecycleProjection, LifecycleStatus, StartupTimeline
from routeiq.lifecycle.runtime import Runtime
from routeiq.lifecycle.statechart import Statechart
from routeiq.lifecycle.supervisor import Service, Supervisor

if TYPE_CHECKING:
    from routeiq.observability.metrics import GatewayMetrics

__all__ = ["Gateway", "StartupAborted"]

log = logging.getLogger("routeiq.lifecycle")

PHASES: tuple[tuple[str, str], ...] = (
    ("configure", "configure"),
    ("observe", "observe"),
    ("patch", "patch"),
)


class StartupAborted(GatewayError):
    """A shutdown was requested during startup; the gateway unwound and stopped cleanly."""


class Gateway:
    """One gateway instance: its event log, projections and the resources its phases built."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        config_path: Path | None = None,
        clock: Clock | None = None,
        worker_id: str | None = None,
        unwind_timeout_s: float = 30.0,
    ) -> None:
        self._env = dict(os.environ if env is None else env)
        self._config_path = config_path
        self.clock: Clock = clock or SystemClock()
        self.worker_id = (
            worker_id
            or self._env.get("ROUTEIQ_WORKER_ID")
            or (f"{socket.gethostname()}-{os.getpid()}")
        )
        self.chart = Statechart.load("gateway")
        self.events = EventLog(self.clock, worker_id=self.worker_id)
        self._lifecycle = LifecycleProjection(self.chart)
        self.timeline = StartupTimeline()
        self.events.subscribe(self._lifecycle)
        self.events.subscribe(self.timeline)
        self._unwind_timeout_s = unwind_timeout_s
        self._drain_requested = anyio.Event()
        self._released = anyio.Event()
        self._startup_scope: anyio.CancelScope | None = None
        self._phase = "configure"
        self._loaded_config: GatewayConfig | None = None
        self.runtime: Runtime | None = None
        self.metrics: GatewayMetrics | None = None
        self.tracer_provider: Any = None
        self.supervisor: Supervisor | None = None
        self._sink: JsonlSink | None = None
        self._close_logging: Callable[[], None] | None = None
        self._litellm: Any = None
        self.extensions: dict[str, Any] = {}
        from routeiq.routing.registry import default_registry

        # Extensions may register strategies until the gateway serves; then it is frozen.
        self.strategies = default_registry()

    # --- projections -------------------------------------------------------------------------

    @property
    def config(self) -> GatewayConfig | None:
        """The config being served (after a reload, the new one)."""
        return self.runtime.config if self.runtime is not None else self._loaded_config

    @property
    def router(self) -> Any:
        return None if self.runtime is None else self.runtime.router

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

    async def run(self, *, task_status: TaskStatus[Gateway] = anyio.TASK_STATUS_IGNORED) -> None:
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
                    await self._resign_leadership()
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
            if self._sink is not None:
                self._sink.close()
            if self._close_logging is not None:
                self._close_logging()

    async def _start(self, undo: AsyncExitStack, supervisor: Supervisor) -> None:
        with anyio.CancelScope() as scope:
            self._startup_scope = scope
            if self._drain_requested.is_set():
                scope.cancel()
            try:
                for phase, trigger in PHASES:
                    self._phase = phase
                    await getattr(self, f"_phase_{phase}")(undo)
                    await self._run_hooks(phase, undo)
                    self._fire(trigger)
                self._phase = "serve"
                await self._phase_serve(supervisor)
                await self._run_hooks("serve", undo)
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
        self.strategies.freeze()
        self._fire("serve")
        # What startup allocated stays: keep full collections from walking it (DESIGN §8).
        from routeiq.observability.gc_pauses import freeze_startup_heap

        freeze_startup_heap()

    async def _resign_leadership(self) -> None:
        leadership = self.extensions.get("leadership")
        if leadership is None:
            return
        with anyio.move_on_after(self._unwind_timeout_s, shield=True):
            await leadership.resign()

    # --- phases ----------------------------------------------------------------------------------

    async def _phase_configure(self, undo: AsyncExitStack) -> None:
        with self._component("config"):
            config = load_config(self._env, self._config_path)
            self.events.redactor.add(config.secrets)
            from routeiq.routing.litellm_setup import validate_routing

            validate_routing(self.strategies, config)
            self._loaded_config = config
        if config.routeiq.event_log.path is not None:
            with self._component("event_sink"):
                sink = JsonlSink(config.routeiq.event_log.path)
                self.events.subscribe(sink, replay=True)
            # Not on the undo stack: the sink must outlive the unwinding to record the final
            # transition; ``run`` closes it last.
            self._sink = sink
        for path, message in config.warnings:  # LiteLLM keys RouteIQ ignores, one event each
            self.events.append(
                EventKind.WARNING, component="config", attributes={"message": f"{path}: {message}"}
            )
        if config.master_key is None:
            self.events.append(
                EventKind.WARNING,
                component="auth",
                attributes={"message": "no master key is set: the /v1 API is open to anyone"},
            )

    async def _phase_observe(self, undo: AsyncExitStack) -> None:
        config = self._config()
        with self._component("metrics"):
            from routeiq.observability.metrics import (
                GatewayMetrics,
                LifecycleMetricsProjection,
                prepare_multiprocess_dir,
            )

            multiproc = config.routeiq.metrics.multiproc_dir or _env_path(
                self._env, "PROMETHEUS_MULTIPROC_DIR"
            )
            if multiproc is not None:
                prepare_multiprocess_dir(multiproc)
            metrics = GatewayMetrics(multiprocess_dir=multiproc)
            unsubscribe = self.events.subscribe(
                LifecycleMetricsProjection(metrics, self.chart.states)
            )
            self.metrics = metrics
            from routeiq.observability.gc_pauses import GcPauseRecorder

            remove_gc_recorder = GcPauseRecorder(metrics.gateway_gc_pause_seconds).install()

        def close_metrics() -> None:
            unsubscribe()
            remove_gc_recorder()

        self._on_undo(undo, "metrics", close_metrics)
        with self._component("logging"):
            from routeiq.observability.logging import EventLogger, install_handler

            remove_handler = install_handler(config.routeiq.log_level)
            stop_logging = self.events.subscribe(EventLogger(), replay=True)

        def close_logging() -> None:
            stop_logging()
            remove_handler()

        # Like the event sink, logging outlives the unwinding so that the final transition is
        # logged too; ``run`` closes it last (an undo entry records the teardown's place).
        self._close_logging = close_logging
        self._on_undo(undo, "logging", lambda: None)
        with self._component("tracing"):
            from routeiq.observability.startup_trace import StartupTraceProjection
            from routeiq.observability.tracing import build_tracer_provider

            provider = build_tracer_provider(config, self.worker_id, env=self._env)
            self.tracer_provider = provider
            stop_trace = self.events.subscribe(StartupTraceProjection(provider), replay=True)

        def close_tracing() -> None:
            stop_trace()
            provider.shutdown()

        self._on_undo(undo, "tracing", close_tracing)

    async def _phase_patch(self, undo: AsyncExitStack) -> None:
        from routeiq.proxy.passthrough import Passthrough, passthrough_applies, request_timeout_s
        from routeiq.routing.litellm_setup import build_router, import_litellm

        config = self._config()
        with self._component("litellm"):
            litellm = import_litellm()
            self._litellm = litellm
        with self._component("router"):
            built = build_router(litellm, config, self.strategies)
            self.runtime = Runtime(
                config,
                built.router,
                revision=1,
                fast_path=passthrough_applies(config, callback_free=built.callback_free),
                digest=config.digest,
            )
        self._on_undo(undo, "router", self._drop_router)
        self.events.append(
            EventKind.CONFIG,
            trigger="loaded",
            attributes={"revision": 1, "digest": config.digest[:12], "origin": config.source},
        )
        if config.routeiq.passthrough:
            with self._component("http_client"):
                passthrough = Passthrough.create(default_timeout_s=request_timeout_s(config))
                self.extensions["passthrough"] = passthrough
            self._on_undo(undo, "http_client", passthrough.close)
        if config.routeiq.mcp.enabled:
            from routeiq.mcp.component import open_mcp

            with self._component("mcp_registry"):
                self.extensions["mcp"], close_mcp = await open_mcp(self, self._env)
            self._on_undo(undo, "mcp_registry", close_mcp)

    async def _phase_serve(self, supervisor: Supervisor) -> None:
        config = self._config()
        supervisor.set_limits(**config.routeiq.supervisor.model_dump())
        if "mcp" in self.extensions:
            for service in self.extensions["mcp"].services(supervisor):
                with self._component(service.name):
                    await supervisor.start(service)
        for spec in config.routeiq.services:
            with self._component(f"service:{spec.name}"):
                field = f"routeiq.services[{spec.name}].call"
                run = resolve_callable(spec.call, field=field)
                await supervisor.start(
                    Service(
                        spec.name,
                        partial(run, self._hook_context("serve", spec.name)),
                        spec.restart,
                    )
                )
        from routeiq.lifecycle.coordination import start_coordination

        for name, service in await start_coordination(self, supervisor, self._litellm, self._env):
            with self._component(name):
                await supervisor.start(service)

    async def _run_hooks(self, phase: str, undo: AsyncExitStack) -> None:
        config = self.config
        if config is None:
            return
        for index, hook in enumerate(config.routeiq.hooks):
            if hook.phase != phase:
                continue
            with self._component(hook.component):
                fn = resolve_callable(hook.call, field=f"routeiq.hooks[{index}].call")
                result = fn(self._hook_context(phase, hook.component))
                if inspect.isawaitable(result):
                    result = await result
                if isinstance(result, AbstractAsyncContextManager):
                    await result.__aenter__()
                    self._on_undo(undo, hook.component, partial(result.__aexit__, None, None, None))

    # --- helpers ---------------------------------------------------------------------------------

    def _supervisor(self) -> Supervisor:
        def give_up(service: str, reason: str) -> None:
            if self.state not in self.chart.terminal:
                self._fire("fail", error=reason, phase="supervisor", service=service)

        return Supervisor(self.events, clock=self.clock, on_give_up=give_up)

    def _config(self) -> GatewayConfig:
        if self.config is None:
            raise GatewayError("the configure phase has not run")
        return self.config

    def _hook_context(self, phase: str, name: str | None = None) -> HookContext:
        return HookContext(
            phase=phase,
            config=self._config(),
            events=self.events,
            worker_id=self.worker_id,
            name=name,
        )

    def _drop_router(self) -> None:
        from routeiq.routing.litellm_setup import retire_router

        if self.runtime is not None:
            retire_router(self.runtime.router)
        self.runtime = None

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


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value else None


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
