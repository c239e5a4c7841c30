"""Hot reload: build a new config and Router beside the running ones, then swap them at once.

``RouterReloader.apply`` validates the new text fully (the same loader as startup, then a
Router built from it), and only then replaces ``gateway.runtime`` in one assignment: requests in
flight keep the Runtime they started with. A config that fails anywhere is rejected: the old one
keeps serving, a ``config`` event and ``gateway_config_reloads_total{result="rejected"}`` record
it, and the revision does not move. Reading and parsing run in a worker thread (a large or
hostile file never stalls the event loop), and a rejection's reasons never hold a fragment of a
secret (see ``routeiq.config.problems``). Settings that only a restart can apply (leadership,
event log, drain, supervisor, hooks, services, metrics) make a reload rejected, not half-applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import anyio

from routeiq.config.loader import parse_config_bytes, parse_config_text
from routeiq.config.model import GatewayConfig
from routeiq.config.problems import scrub_fragments
from routeiq.config.reload import ReloadResult, digest_of
from routeiq.errors import ConfigError, describe
from routeiq.lifecycle.events import EventKind
from routeiq.proxy.passthrough import Passthrough, passthrough_applies
from routeiq.routing.litellm_setup import (
    BuiltRouter,
    build_router,
    retire_router,
    validate_routing,
)
from routeiq.routing.picker import DeploymentPicker
from routeiq.routing.runtime import Runtime

if TYPE_CHECKING:
    from routeiq.assembly.gateway import Gateway

__all__ = ["RELOADABLE_ROUTEIQ_FIELDS", "RouterReloader", "serving_runtime"]

# Parts of the `routeiq:` section a reload may change; any other change needs a restart.
RELOADABLE_ROUTEIQ_FIELDS = frozenset(
    {"master_key", "admin_key", "read_key", "routing", "limits", "passthrough"}
)


class RouterReloader:
    """The ``routeiq.config.reload.Reloader`` of one gateway: swaps its ``Runtime``."""

    def __init__(self, gateway: Gateway, litellm: ModuleType, env: dict[str, str]) -> None:
        self._gateway = gateway
        self._litellm = litellm
        self._env = env

    def source_path(self) -> Path | None:
        runtime = self._gateway.runtime
        if runtime is None or runtime.config.source.startswith("<"):
            return None
        return Path(runtime.config.source)

    def running_digest(self) -> str | None:
        """The digest of the config being served (of its source text)."""
        runtime = self._gateway.runtime
        return None if runtime is None else runtime.digest

    def parse(self, text: str | bytes, source: str) -> GatewayConfig:
        """The config in ``text`` (raw bytes are decoded as UTF-8); only ``ConfigError``."""
        if isinstance(text, bytes):
            return parse_config_bytes(text, self._env, source=source)
        return parse_config_text(text, self._env, source=source)

    def validate(self, text: str | bytes, source: str) -> GatewayConfig:
        """The config in ``text`` if the running gateway could switch to it, else ConfigError.
        Parses on the calling thread: from the event loop, ``parse`` in a worker thread and
        then ``check_switchable``."""
        config = self.parse(text, source)
        self.check_switchable(config)
        return config

    def check_switchable(self, config: GatewayConfig) -> None:
        """Raise if the running gateway could not switch to the parsed ``config``: a field only
        a restart applies changed, or litellm refuses to build a Router from it.

        Runs on the event loop, like the Router build in ``apply``: litellm's Router setup
        registers process-global callbacks and is not safe beside a live Router on another
        thread. It costs milliseconds for a config that parsed (parsing is the bounded,
        threaded part)."""
        self._check_reloadable(config)
        # Rejects router_settings litellm refuses and strategies that cannot be installed.
        retire_router(build_router(self._litellm, config, self._gateway.strategies).router)

    async def apply(self, text: str | bytes, *, revision: int | None, origin: str) -> ReloadResult:
        """Switch to ``text`` (at ``revision``, default current + 1): ``applied``,
        ``unchanged`` or ``rejected`` with reasons; never raises for any content."""
        gateway = self._gateway
        current = gateway.runtime
        if current is None:
            raise RuntimeError("reload before the gateway built its first Runtime")
        digest = digest_of(text)
        new_revision = current.revision + 1 if revision is None else revision
        if digest == current.digest:
            if revision is not None and revision > current.revision:
                # The same config, published under a newer revision: adopt the number, as an
                # event (the revision gauge and the log must say what this worker serves).
                gateway.runtime = dataclasses.replace(current, revision=revision)
                gateway.events.append(
                    EventKind.CONFIG,
                    trigger="loaded",
                    attributes={"revision": revision, "digest": digest[:12], "origin": origin},
                )
            return ReloadResult(
                "unchanged", gateway.runtime.revision if gateway.runtime else 0, digest
            )
        config: GatewayConfig | None = None
        try:
            config = await anyio.to_thread.run_sync(self.parse, text, current.config.source)
            self._check_reloadable(config)
            validate_routing(gateway.strategies, config)
            built = build_router(self._litellm, config, gateway.strategies)
        except Exception as exc:  # any failure: the old config keeps serving
            secrets = current.config.secrets | (config.secrets if config is not None else set())
            return self.reject(digest, exc, origin=origin, secrets=secrets)
        gateway.events.redactor.add(config.secrets)
        gateway.runtime = serving_runtime(config, built, new_revision, digest)
        # Requests in flight keep using the old Router; retiring only drops its global hooks.
        retire_router(current.router)
        for path, message in config.warnings:
            gateway.events.append(
                EventKind.WARNING, component="config", attributes={"message": f"{path}: {message}"}
            )
        gateway.events.append(
            EventKind.CONFIG,
            trigger="applied",
            attributes={
                "revision": new_revision,
                "digest": digest[:12],
                "origin": origin,
                "models": ",".join(config.model_names),
            },
        )
        return ReloadResult("applied", new_revision, digest)

    def reject(
        self,
        digest: str,
        error: BaseException | str,
        *,
        origin: str,
        secrets: Iterable[str] = (),
    ) -> ReloadResult:
        """Record a rejected config (the running one keeps serving) and say why."""
        current = self._gateway.runtime
        known = {*secrets, *(() if current is None else current.config.secrets)}
        text = error if isinstance(error, str) else describe(error)
        message = scrub_fragments(text, known)
        self.record_rejected(digest, message, origin=origin)
        return ReloadResult("rejected", 0 if current is None else current.revision, digest, message)

    def record_rejected(self, digest: str, error: str, *, origin: str) -> None:
        current = self._gateway.runtime
        self._gateway.events.append(
            EventKind.CONFIG,
            trigger="rejected",
            ok=False,
            error=error,
            attributes={
                "revision": None if current is None else current.revision,
                "digest": digest[:12],
                "origin": origin,
            },
        )

    def _check_reloadable(self, config: GatewayConfig) -> None:
        running = self._gateway.runtime
        if running is None:
            return
        fixed = set(type(config.routeiq).model_fields) - RELOADABLE_ROUTEIQ_FIELDS
        old = running.config.routeiq.model_dump(include=fixed)
        new = config.routeiq.model_dump(include=fixed)
        changed = sorted(name for name in fixed if old.get(name) != new.get(name))
        if changed:
            raise ConfigError(
                [
                    (f"routeiq.{name}", "cannot change while running: restart the gateway")
                    for name in changed
                ],
                source=config.source,
            )


def serving_runtime(
    config: GatewayConfig, built: BuiltRouter, revision: int, digest: str
) -> Runtime:
    """The ``Runtime`` for a new Router: whether requests may take the fast path, and the
    picker for its plain model groups."""
    fast_path = passthrough_applies(config, callback_free=built.callback_free)
    picker = None
    if fast_path:
        picker = DeploymentPicker.for_router(
            built.router,
            config.router_settings,
            built.hook,
            eligible=lambda deployment: Passthrough.target(deployment) is not None,
        )
    return Runtime(config, built.router, revision, fast_path, digest, picker)
