"""Checks beyond the schema, run inside every load (startup, ``check``, reload).

``reference_problems``: fallbacks name defined models, ``api_base`` is an http(s) URL with an
ASCII host. What only building the gateway's parts can find (hooks, strategies, litellm's Router)
is ``routeiq.assembly.checks``. Messages never echo a secret: at most a model name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FALLBACK_SETTINGS", "reference_problems"]

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
