"""The assembled gateway: what each lifecycle phase builds, and where the parts are kept.

This is the composition root. ``routeiq.lifecycle`` runs the phases in order and unwinds them;
``Gateway`` fills them in from every feature package:

- ``configure``: the config (env + YAML, fully validated) and the JSONL event sink;
- ``observe``: the metrics registry, logging and the tracer provider of this instance;
- ``patch``: litellm, the Router with RouteIQ's routing, the passthrough HTTP client, MCP;
- ``serve``: MCP's services, the configured services, config sync and leadership, under the
  supervisor.

The parts are ``gateway.components`` (typed fields), ``gateway.runtime`` (the config and Router
being served), ``gateway.metrics`` and ``gateway.tracer_provider``. Operator hooks run at the
end of their phase.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

from routeiq.assembly.components import Components
from routeiq.assembly.coordination import start_coordination
from routeiq.assembly.reload import serving_runtime
from routeiq.config.loader import load_config
from routeiq.config.model import GatewayConfig
from routeiq.errors import GatewayError
from routeiq.lifecycle.clock import Clock, SystemClock
from routeiq.lifecycle.events import EventKind, JsonlSink
from routeiq.lifecycle.hooks import HookContext, resolve_callable
from routeiq.lifecycle.phases import Lifecycle, StartupAborted
from routeiq.lifecycle.supervisor import Service, Supervisor
from routeiq.mcp.component import open_mcp
from routeiq.observability.gc_pauses import GcPauseRecorder, freeze_startup_heap
from routeiq.observability.logging import EventLogger, install_handler
from routeiq.observability.metrics import (
    GatewayMetrics,
    LifecycleMetricsProjection,
    prepare_multiprocess_dir,
)
from routeiq.observability.startup_trace import StartupTraceProjection
from routeiq.observability.tracing import build_tracer_provider
from routeiq.proxy.passthrough import Passthrough, request_timeout_s
from routeiq.routing.litellm_setup import (
    build_router,
    import_litellm,
    retire_router,
    validate_routing,
)
from routeiq.routing.registry import default_registry
from routeiq.routing.runtime import Runtime

__all__ = ["Gateway", "StartupAborted"]


class Gateway(Lifecycle):
    """One gateway instance: its lifecycle, and the parts its phases built."""

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
        super().__init__(
            clock=clock or SystemClock(),
            worker_id=(
                worker_id
                or self._env.get("ROUTEIQ_WORKER_ID")
                or (f"{socket.gethostname()}-{os.getpid()}")
            ),
            unwind_timeout_s=unwind_timeout_s,
        )
        self._config_path = config_path
        self._loaded_config: GatewayConfig | None = None
        self.runtime: Runtime | None = None
        self.metrics: GatewayMetrics | None = None
        self.tracer_provider: Any = None
        self.components = Components()
        self._litellm: Any = None
        # Hooks may register strategies until the gateway serves; then it is frozen.
        self.strategies = default_registry()

    @property
    def config(self) -> GatewayConfig | None:
        """The config being served (after a reload, the new one)."""
        return self.runtime.config if self.runtime is not None else self._loaded_config

    @property
    def router(self) -> Any:
        return None if self.runtime is None else self.runtime.router

    # --- the lifecycle's phases --------------------------------------------------------------

    async def _build(self, phase: str, undo: AsyncExitStack) -> None:
        await getattr(self, f"_phase_{phase}")(undo)
        await self._run_hooks(phase, undo)

    async def _serve(self, supervisor: Supervisor, undo: AsyncExitStack) -> None:
        await self._phase_serve(supervisor)
        await self._run_hooks("serve", undo)

    def _serving(self) -> None:
        self.strategies.freeze()
        # What startup allocated stays: keep full collections from walking it (DESIGN §8).
        freeze_startup_heap()

    async def _resign(self) -> None:
        leadership = self.components.leadership
        if leadership is not None:
            await leadership.resign()

    async def _phase_configure(self, undo: AsyncExitStack) -> None:
        with self._component("config"):
            config = load_config(self._env, self._config_path)
            self.events.redactor.add(config.secrets)
            validate_routing(self.strategies, config)
            self._loaded_config = config
        if config.routeiq.event_log.path is not None:
            with self._component("event_sink"):
                sink = JsonlSink(config.routeiq.event_log.path)
                self.events.subscribe(sink, replay=True)
            # Not on the undo stack: the sink must outlive the unwinding to record the final
            # transition.
            self._close_last(sink.close)
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
            remove_gc_recorder = GcPauseRecorder(metrics.gateway_gc_pause_seconds).install()

        def close_metrics() -> None:
            unsubscribe()
            remove_gc_recorder()

        self._on_undo(undo, "metrics", close_metrics)
        with self._component("logging"):
            remove_handler = install_handler(config.routeiq.log_level)
            stop_logging = self.events.subscribe(EventLogger(), replay=True)

        def close_logging() -> None:
            stop_logging()
            remove_handler()

        # Like the event sink, logging outlives the unwinding so that the final transition is
        # logged too (an undo entry records the teardown's place).
        self._close_last(close_logging)
        self._on_undo(undo, "logging", lambda: None)
        with self._component("tracing"):
            provider = build_tracer_provider(config, self.worker_id, env=self._env)
            self.tracer_provider = provider
            stop_trace = self.events.subscribe(StartupTraceProjection(provider), replay=True)

        def close_tracing() -> None:
            stop_trace()
            provider.shutdown()

        self._on_undo(undo, "tracing", close_tracing)

    async def _phase_patch(self, undo: AsyncExitStack) -> None:
        config = self._config()
        with self._component("litellm"):
            # Imported here, not with this module: its import time shows in the timeline.
            litellm = import_litellm()
            self._litellm = litellm
        with self._component("router"):
            built = build_router(litellm, config, self.strategies)
            self.runtime = serving_runtime(config, built, 1, config.digest)
        self._on_undo(undo, "router", self._drop_router)
        self.events.append(
            EventKind.CONFIG,
            trigger="loaded",
            attributes={"revision": 1, "digest": config.digest[:12], "origin": config.source},
        )
        if config.routeiq.passthrough:
            with self._component("http_client"):
                passthrough = Passthrough.create(default_timeout_s=request_timeout_s(config))
                self.components.passthrough = passthrough
            self._on_undo(undo, "http_client", passthrough.close)
        if config.routeiq.mcp.enabled:
            with self._component("mcp_registry"):
                self.components.mcp, close_mcp = await open_mcp(self, self._env)
            self._on_undo(undo, "mcp_registry", close_mcp)

    async def _phase_serve(self, supervisor: Supervisor) -> None:
        config = self._config()
        supervisor.set_limits(**config.routeiq.supervisor.model_dump())
        if self.components.mcp is not None:
            for service in self.components.mcp.services(supervisor):
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
        for name, service in await start_coordination(self, self._litellm, self._env):
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
        if self.runtime is not None:
            retire_router(self.runtime.router)
        self.runtime = None


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value else None
