"""What ``serve`` would reject, found up front by ``routeiq check``.

So that a config ``routeiq check`` accepts is one ``serve`` starts: hooks and services import
and are callable, the routing strategy (and each A/B arm's) exists and accepts its options, and
litellm's Router accepts the deployments and router settings (this imports litellm). Importing
hooks runs operator code, so it is never part of a hot reload (hooks cannot change then anyway).
Messages never echo a secret: at most a model name.
"""

from __future__ import annotations

from routeiq.config.model import GatewayConfig
from routeiq.config.problems import scrub_fragments
from routeiq.errors import ConfigError, describe
from routeiq.lifecycle.hooks import resolve_callable
from routeiq.routing.litellm_setup import (
    build_router,
    import_litellm,
    retire_router,
    validate_routing,
)
from routeiq.routing.registry import default_registry

__all__ = ["startup_problems"]


def startup_problems(config: GatewayConfig) -> list[tuple[str, str]]:
    """What the ``configure`` and ``serve`` phases would reject: imports and strategies."""
    problems: list[tuple[str, str]] = []
    targets = [(f"routeiq.hooks[{i}].call", h.call) for i, h in enumerate(config.routeiq.hooks)]
    targets += [
        (f"routeiq.services[{i}].call", s.call) for i, s in enumerate(config.routeiq.services)
    ]
    for field, target in targets:
        try:
            resolve_callable(target, field=field)
        except ConfigError as exc:
            problems.extend(exc.problems)
        except Exception as exc:  # operator code failed while importing
            module = target.partition(":")[0]
            problems.append((field, f"importing {module!r} failed: {describe(exc)}"))
    try:
        validate_routing(default_registry(), config)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if not problems:
        problems += _router_problems(config)
    return problems


def _router_problems(config: GatewayConfig) -> list[tuple[str, str]]:
    """Build (and retire) the Router ``serve`` would build: litellm's own checks."""
    try:
        built = build_router(import_litellm(), config, default_registry())
    except ConfigError as exc:
        return [(path, scrub_fragments(m, config.secrets)) for path, m in exc.problems]
    except Exception as exc:  # litellm refused the config in a way of its own
        return [
            ("model_list", scrub_fragments(f"rejected by litellm: {describe(exc)}", config.secrets))
        ]
    retire_router(built.router)
    return []
