"""The strategies a gateway can route with, by name, and installing one on a Router.

A ``StrategyRegistry`` maps names to factories: litellm's built-in strategies
(``LITELLM_STRATEGIES``) and RouteIQ's ``cost-aware`` and ``weighted-ab``, plus whatever an
extension registers before the gateway serves. ``freeze()`` closes it: registering afterwards
raises, while ``create`` and ``install`` keep working (a config reload installs on a new Router).

``install(router, config)`` builds the configured strategy for that Router, configures the
Router's own ``routing_strategy`` when a stateful litellm strategy needs it, and registers a
``RoutingHook`` through litellm's per-Router hook (``Router.register_plugin``). Nothing is
patched: other Routers in the process are untouched. There is no module-level registry;
``default_registry()`` builds a fresh one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from routeiq.errors import ConfigError, GatewayError
from routeiq.routing.ab import weighted_ab_factory
from routeiq.routing.cost_aware import cost_aware_factory
from routeiq.routing.hook import DecisionCallback, RoutingHook
from routeiq.routing.strategies import (
    LITELLM_STRATEGIES,
    LitellmStrategy,
    NativeStrategy,
    NeedsNativeStrategy,
    Strategy,
    StrategyContext,
    StrategyFactory,
)

__all__ = ["DEFAULT_PATH", "StrategyRegistry", "StrategySpec", "default_registry"]

DEFAULT_PATH = "routeiq.routing"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@dataclass(frozen=True, slots=True)
class StrategySpec:
    """A ``{strategy, options}`` config block; ``strategy=None`` means the Router's own."""

    strategy: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, config: object, path: str = DEFAULT_PATH) -> StrategySpec:
        """From a spec, a name, ``None``, a mapping or anything with ``strategy``/``options``
        attributes (such as the config model's ``RoutingSettings``)."""
        if isinstance(config, StrategySpec):
            return config
        if config is None or isinstance(config, str):
            return cls(config)
        if isinstance(config, Mapping):
            unknown = sorted(set(config) - {"strategy", "options"}, key=str)
            if unknown:
                raise ConfigError([(f"{path}.{k}", "unknown key") for k in unknown])
            strategy, options = config.get("strategy"), config.get("options")
        else:
            strategy, options = getattr(config, "strategy", None), getattr(config, "options", None)
        if strategy is not None and not isinstance(strategy, str):
            raise ConfigError([(f"{path}.strategy", f"must be a name, got {strategy!r}")])
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError([(f"{path}.options", "must be a mapping")])
        return cls(strategy, options or {})


class StrategyRegistry:
    def __init__(self) -> None:
        self._factories: dict[str, StrategyFactory] = {}
        self._frozen = False

    def register(self, name: str, factory: StrategyFactory) -> None:
        if self._frozen:
            raise GatewayError(
                f"Cannot register routing strategy {name!r} after the strategy registry "
                "is frozen (the gateway has started serving)"
            )
        if not _NAME.match(name):
            raise GatewayError(f"strategy names are lowercase words joined by '-', got {name!r}")
        if name in self._factories:
            raise GatewayError(f"routing strategy {name!r} is already registered")
        self._factories[name] = factory

    def freeze(self) -> None:
        self._frozen = True

    @property
    def frozen(self) -> bool:
        return self._frozen

    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def create(
        self, name: str, options: Mapping[str, Any], router: Any, *, path: str = DEFAULT_PATH
    ) -> Strategy:
        """A new ``name`` strategy for ``router``; config problems raise ``ConfigError`` naming
        their path under ``path`` (the block holding ``strategy`` and ``options``)."""
        ctx = StrategyContext(router, self, path)
        factory = self._factories.get(name)
        if factory is None:
            known = ", ".join(sorted(self._factories))
            raise ConfigError(
                [(ctx.name_path, f"unknown routing strategy {name!r}; known: {known}")]
            )
        if not isinstance(options, Mapping):
            raise ConfigError(
                [(ctx.options_path, f"must be a mapping, got {type(options).__name__}")]
            )
        return factory(options, ctx)

    def install(
        self,
        router: Any,
        config: object = None,
        *,
        path: str = DEFAULT_PATH,
        on_decision: DecisionCallback | None = None,
    ) -> RoutingHook:
        """Route ``router``'s picks through the configured strategy; return the installed hook."""
        spec = StrategySpec.of(config, path)
        name = spec.strategy if spec.strategy is not None else _router_strategy(router)
        strategy = self.create(name, spec.options, router, path=path)
        natives = strategy.native_strategies() if isinstance(strategy, NeedsNativeStrategy) else ()
        _configure_native(router, natives)
        hook = RoutingHook(router, strategy, on_decision=on_decision)
        router.register_plugin(hook)
        return hook


def _router_strategy(router: Any) -> str:
    configured = router.settings().routing_strategy
    return str(getattr(configured, "value", configured) or "simple-shuffle")


def _configure_native(router: Any, natives: tuple[NativeStrategy, ...]) -> None:
    """Configure the Router with the stateful litellm strategy the RouteIQ one runs, if any;
    this must precede ``register_plugin``, which a strategy change would undo."""
    if not natives:
        return
    distinct = {(n.name, repr(sorted(n.args.items()))) for n in natives}
    if len(distinct) > 1:
        described = ", ".join(f"{n.name} at {n.path}" for n in natives)
        raise ConfigError(
            [
                (
                    n.path,
                    f"a Router runs one stateful litellm strategy with one set of options; "
                    f"this config asks for {described}",
                )
                for n in natives
            ]
        )
    native = natives[0]
    if _router_strategy(router) == native.name and not native.args:
        return
    from litellm.router_api import ChangeSet

    settings = {"routing_strategy": native.name, "routing_strategy_args": dict(native.args)}
    try:
        router.apply(ChangeSet(settings=settings))
    except (TypeError, ValueError) as exc:
        raise ConfigError([(native.path, f"rejected by litellm: {exc}")]) from exc


def _litellm_factory(name: str) -> StrategyFactory:
    def factory(options: Mapping[str, Any], ctx: StrategyContext) -> Strategy:
        return LitellmStrategy(name, ctx.router, options, ctx.options_path)

    return factory


def default_registry() -> StrategyRegistry:
    """A new registry holding litellm's built-in strategies and RouteIQ's own."""
    registry = StrategyRegistry()
    for name in LITELLM_STRATEGIES:
        registry.register(name, _litellm_factory(name))
    registry.register("cost-aware", cost_aware_factory)
    registry.register("weighted-ab", weighted_ab_factory)
    return registry
