"""Checks beyond the schema, so that a config ``routeiq check`` accepts is one ``serve`` starts.

``reference_problems`` runs inside every load (startup, ``check``, reload): fallbacks name
defined models, ``api_base`` is an http(s) URL with an ASCII host. ``startup_problems`` is what
``serve`` would find later, run by ``check`` up front: hooks and services import and are
callable, the routing strategy (and each A/B arm's) exists and accepts its options, and
litellm's Router accepts the deployments and router settings (this imports litellm). Importing
hooks runs operator code, so it is never part of a hot reload (hooks cannot change then anyway).
Messages never echo a secret: at most a model name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from routeiq.config.model import GatewayConfig
from routeiq.errors import ConfigError, describe

__all__ = ["FALLBACK_SETTINGS", "reference_problems", "startup_problems"]

# router_settings keys whose values name model groups: {model: [fallback, ...]} lists, or a list.
FALLBACK_SETTINGS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")


def reference_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems of a resolved (env references substituted) config mapping."""
    problems: list[tuple[str, str]] = []
    models = data.get("model_list")
    names: set[str] = set()
    patterns: list[str] = []
    if isinstance(models, list):
        for index, entry in enumerate(models):
            if not isinstance(entry, Mapping):
                continue
            name = entry.get("model_name")
            if isinstance(name, str):
                if "*" in name:
                    patterns.append(name)
                else:
                    names.add(name)
            params = entry.get("litellm_params")
            if isinstance(params, Mapping) and params.get("api_base") is not None:
                problem = _url_problem(params["api_base"])
                if problem:
                    problems.append((f"model_list[{index}].litellm_params.api_base", problem))
    router = data.get("router_settings")
    if not isinstance(router, Mapping) or not isinstance(models, list):
        return problems
    aliases = router.get("model_group_alias")
    if isinstance(aliases, Mapping):
        names.update(str(k) for k in aliases)

    def check_name(value: Any, path: str) -> None:
        if not isinstance(value, str):
            problems.append((path, "must be a model name (a string)"))
        elif value not in names and not any(fnmatch.fnmatchcase(value, p) for p in patterns):
            problems.append((path, f"names no model in model_list: {value!r}"))

    for key in FALLBACK_SETTINGS:
        value = router.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            problems.append((f"router_settings.{key}", "must be a list of {model: [fallbacks]}"))
            continue
        for i, item in enumerate(value):
            path = f"router_settings.{key}[{i}]"
            if not isinstance(item, Mapping):
                problems.append((path, "must be a mapping {model: [fallback models]}"))
                continue
            for source, targets in item.items():
                check_name(source, f"{path} (key)")
                if isinstance(targets, str):
                    targets = [targets]
                if not isinstance(targets, list):
                    problems.append((f"{path}.{source}", "must be a list of model names"))
                    continue
                for j, target in enumerate(targets):
                    check_name(target, f"{path}.{source}[{j}]")
    default = router.get("default_fallbacks")
    if default is not None:
        if not isinstance(default, list):
            problems.append(("router_settings.default_fallbacks", "must be a list of model names"))
        else:
            for j, target in enumerate(default):
                check_name(target, f"router_settings.default_fallbacks[{j}]")
    return problems


def startup_problems(config: GatewayConfig) -> list[tuple[str, str]]:
    """What the ``configure`` and ``serve`` phases would reject: imports and strategies."""
    from routeiq.lifecycle.hooks import resolve_callable
    from routeiq.routing.litellm_setup import validate_routing
    from routeiq.routing.registry import default_registry

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
    from routeiq.config.problems import scrub_fragments
    from routeiq.routing.litellm_setup import build_router, import_litellm, retire_router
    from routeiq.routing.registry import default_registry

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


def _url_problem(value: Any) -> str | None:
    expected = "must be an http:// or https:// URL with an ASCII host name"
    if not isinstance(value, str):
        return f"{expected} (a string)"
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return f"{expected}; it does not parse as a URL"
    if parts.scheme not in ("http", "https"):
        return f"{expected}; the scheme is not http or https"
    if not host:
        return f"{expected}; it has no host"
    if not host.isascii():
        return f"{expected}; the host has non-ASCII characters (use its punycode form)"
    return None
