"""Importing litellm with its side effects tamed, and building a Router per app instance.

``import litellm`` fetches the model cost map over the network unless
``LITELLM_LOCAL_MODEL_COST_MAP`` is set, loads ``.env`` files unless ``LITELLM_MODE`` is set,
and attaches its own stderr handlers to its loggers (so every line would print twice beside
ours). ``import_litellm`` sets the two variables (only if the operator has not) and hands
litellm's loggers to the application's logging. It is called in the ``patched`` phase only.

Nothing here sets litellm's module globals or patches its classes: everything per app instance
lives on that instance's ``Router``, and RouteIQ's routing strategy is installed on it through
litellm's per-Router hook (``Router.register_plugin``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from routeiq.config.model import GatewayConfig, thaw
from routeiq.config.problems import validation_problems
from routeiq.errors import ConfigError
from routeiq.routing.hook import RoutingHook
from routeiq.routing.registry import StrategyRegistry
from routeiq.routing.strategies import NeedsNativeStrategy

__all__ = [
    "LITELLM_LOGGERS",
    "BuiltRouter",
    "build_router",
    "import_litellm",
    "retire_router",
    "validate_routing",
]

LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
TAMED_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION"}
ROUTING_PATH = "routeiq.routing"


def import_litellm() -> ModuleType:
    for name, value in TAMED_ENV.items():
        os.environ.setdefault(name, value)
    import litellm

    for name in LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    return litellm


@dataclass(frozen=True, slots=True)
class BuiltRouter:
    router: Any
    # False when the strategy learns from litellm's per-call callbacks (stateful built-ins),
    # which only litellm's own call path runs.
    callback_free: bool
    # The RouteIQ strategy's hook installed on the Router, if one is configured.
    hook: RoutingHook | None = None


class _ConfigRouterView:
    """Just enough of a Router to validate strategy options before litellm is imported."""

    def __init__(self, config: GatewayConfig) -> None:
        self._deployments = _model_list(config)

    def registry(self) -> _ConfigRouterView:
        return self

    def all(self) -> list[dict[str, Any]]:
        return self._deployments


def validate_routing(registry: StrategyRegistry, config: GatewayConfig) -> None:
    """Raise ``ConfigError`` for an unknown strategy or bad options (at ``configured``)."""
    routing = config.routeiq.routing
    if routing.strategy is not None:
        registry.create(
            routing.strategy, routing.options, _ConfigRouterView(config), path=ROUTING_PATH
        )


def build_router(
    litellm: ModuleType, config: GatewayConfig, registry: StrategyRegistry
) -> BuiltRouter:
    """A new ``litellm.Router`` for ``config`` with its routing strategy installed."""
    model_list = _model_list(config)
    settings = thaw(config.router_settings)
    _check_deployments(model_list)
    try:
        router = litellm.Router(model_list=model_list, **settings)
    except ValidationError as exc:  # its text would echo input values: keep path and message
        raise ConfigError(validation_problems(exc, prefix=("router_settings",))) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError([("router_settings", f"rejected by litellm.Router: {exc}")]) from exc
    routing = config.routeiq.routing
    if routing.strategy is None:
        return BuiltRouter(router, settings.get("routing_strategy") in (None, "simple-shuffle"))
    try:
        hook = registry.install(router, routing, path=ROUTING_PATH)
    except BaseException:
        retire_router(router)
        raise
    strategy = hook.strategy
    natives = strategy.native_strategies() if isinstance(strategy, NeedsNativeStrategy) else ()
    return BuiltRouter(router, not natives, hook)


def _check_deployments(model_list: list[dict[str, Any]]) -> None:
    """litellm's own validation of each deployment, reported with its path and never with the
    input values (pydantic's text would quote the neighbouring ``api_key``)."""
    from litellm.types.router import LiteLLM_Params

    problems: list[tuple[str, str]] = []
    for index, deployment in enumerate(model_list):
        try:
            LiteLLM_Params(**dict(deployment["litellm_params"]))
        except ValidationError as exc:
            where = ("model_list", index, "litellm_params")
            problems += validation_problems(exc, prefix=where)
    if problems:
        raise ConfigError(problems)


def _model_list(config: GatewayConfig) -> list[dict[str, Any]]:
    """The deployments as the plain dicts litellm expects (and may mutate)."""
    return [thaw(d.model_dump(mode="python")) for d in config.model_list]


def retire_router(router: Any) -> None:
    """Drop the Router's process-wide registrations (it keeps serving calls in flight)."""
    retire = getattr(router, "retire", None)
    if retire is not None:
        retire()
