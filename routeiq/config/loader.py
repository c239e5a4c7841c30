"""Load a ``GatewayConfig`` from YAML (or the embedded default) and ``ROUTEIQ_*`` env vars.

The loader reports every problem it finds, each with its path, in one ``ConfigError``. It
reads only the env mapping and the file it is given, so tests pass both explicitly.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from routeiq.config.model import GatewayConfig
from routeiq.errors import ConfigError

__all__ = [
    "ENV_OVERRIDES",
    "SUPPORTED_LITELLM_SETTINGS",
    "SUPPORTED_ROUTER_SETTINGS",
    "embedded_default",
    "load_config",
    "parse_config",
    "parse_config_text",
]

ENV_REF_PREFIX = "os.environ/"

# env var -> (path in the config mapping, parser)
ENV_OVERRIDES: dict[str, tuple[tuple[str, ...], str]] = {
    "ROUTEIQ_MASTER_KEY": (("routeiq", "master_key"), "str"),
    "ROUTEIQ_ADMIN_KEY": (("routeiq", "admin_key"), "str"),
    "ROUTEIQ_LOG_LEVEL": (("routeiq", "log_level"), "str"),
    "ROUTEIQ_EVENT_LOG": (("routeiq", "event_log", "path"), "str"),
    "ROUTEIQ_LEADERSHIP_BACKEND": (("routeiq", "leadership", "backend"), "str"),
    "ROUTEIQ_LEADERSHIP_LOCK_PATH": (("routeiq", "leadership", "lock_path"), "str"),
    "ROUTEIQ_ETCD_ENDPOINTS": (("routeiq", "leadership", "etcd_endpoints"), "csv"),
    "ROUTEIQ_DRAIN_DELAY_S": (("routeiq", "drain", "delay_s"), "str"),
    "ROUTEIQ_DRAIN_TIMEOUT_S": (("routeiq", "drain", "timeout_s"), "str"),
    "ROUTEIQ_METRICS_MULTIPROC_DIR": (("routeiq", "metrics", "multiproc_dir"), "str"),
}

# RouteIQ never sets litellm's module globals (another app in the process would see them), so
# only the litellm_settings that can be applied per call are accepted.
SUPPORTED_LITELLM_SETTINGS = frozenset({"drop_params", "num_retries", "request_timeout"})
SUPPORTED_ROUTER_SETTINGS = frozenset(
    {
        "routing_strategy",
        "routing_strategy_args",
        "num_retries",
        "retry_after",
        "timeout",
        "stream_timeout",
        "fallbacks",
        "context_window_fallbacks",
        "content_policy_fallbacks",
        "default_fallbacks",
        "allowed_fails",
        "allowed_fails_policy",
        "cooldown_time",
        "disable_cooldowns",
        "retry_policy",
        "model_group_alias",
        "enable_pre_call_checks",
        "default_max_parallel_requests",
        "max_fallbacks",
    }
)

_EMBEDDED_DEFAULT: dict[str, Any] = {
    "model_list": [
        {
            "model_name": "routeiq-mock",
            "litellm_params": {
                "model": "openai/routeiq-mock",
                "api_key": "routeiq-mock-key",
                "mock_response": "Hello from RouteIQ's embedded default model.",
            },
            "model_info": {"description": "answered offline by litellm's mock_response"},
        }
    ],
}


def embedded_default() -> dict[str, Any]:
    return copy.deepcopy(_EMBEDDED_DEFAULT)


def load_config(env: Mapping[str, str], path: Path | None = None) -> GatewayConfig:
    """The config at ``path`` (else ``ROUTEIQ_CONFIG``, else the embedded default)."""
    origin = "config file"
    if path is None and env.get("ROUTEIQ_CONFIG"):
        path, origin = Path(env["ROUTEIQ_CONFIG"]), "ROUTEIQ_CONFIG"
    if path is None:
        default = parse_config(embedded_default(), env, source="<embedded default>")
        return default.model_copy(update={"digest": _digest(json.dumps(embedded_default()))})
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([(origin, f"file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([(origin, f"cannot read {path}: {exc.strerror}")]) from None
    return parse_config_text(text, env, source=source)


def parse_config_text(text: str, env: Mapping[str, str], *, source: str) -> GatewayConfig:
    """The config in YAML ``text`` (a file's content), with its digest; used at startup and
    by hot reload alike."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError([("", f"YAML syntax error{where}: {problem}")], source=source) from None
    config = parse_config({} if data is None else data, env, source=source)
    return config.model_copy(update={"digest": _digest(text)})


def parse_config(data: object, env: Mapping[str, str], *, source: str) -> GatewayConfig:
    if not isinstance(data, dict):
        raise ConfigError([("", "the top level must be a mapping")], source=source)
    problems: list[tuple[str, str]] = []
    secrets: set[str] = set()
    declared = data.get("environment_variables")
    if isinstance(declared, dict):
        # LiteLLM proxy exports these into os.environ; RouteIQ never touches the process env,
        # so they are only a source for this config's ``os.environ/NAME`` references.
        env = {**env, **{str(k): str(v) for k, v in declared.items()}}
        secrets.update(str(v) for v in declared.values() if len(str(v)) >= 8)
    resolved = _resolve_env_refs(data, env, (), problems, secrets)
    _apply_env_overrides(resolved, env)
    general = resolved.get("general_settings")
    if isinstance(general, dict) and general.get("master_key"):
        # LiteLLM proxy's place for the key; moved so that no plain copy stays in the config.
        routeiq = resolved.setdefault("routeiq", {})
        master_key = general.pop("master_key")
        if isinstance(routeiq, dict):
            routeiq.setdefault("master_key", master_key)
    problems += _check_sections(resolved)
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(resolved)
    except ValidationError as exc:
        errors = exc.errors()
        locs = [tuple(err["loc"]) for err in errors]
        reported = {path for path, _ in problems}
        for err, loc in zip(errors, locs, strict=True):
            # A list whose items failed also fails its own length check; report the items only.
            if err["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
                continue
            if _path(loc) in reported:  # already explained (a missing env reference)
                continue
            problems.append((_path(loc), _message(err)))
    if problems or config is None:
        raise ConfigError(sorted(set(problems)), source=source)
    secrets.update(k for k in (config.master_key, config.admin_key) if k)
    for deployment in config.model_list:
        api_key = getattr(deployment.litellm_params, "api_key", None)
        if isinstance(api_key, str) and api_key:
            secrets.add(api_key)
    return config.model_copy(update={"source": source, "secrets": frozenset(secrets)})


def _resolve_env_refs(
    node: Any,
    env: Mapping[str, str],
    path: tuple[str | int, ...],
    problems: list[tuple[str, str]],
    secrets: set[str],
) -> Any:
    if isinstance(node, dict):
        return {
            k: _resolve_env_refs(v, env, (*path, str(k)), problems, secrets)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [
            _resolve_env_refs(v, env, (*path, i), problems, secrets) for i, v in enumerate(node)
        ]
    if isinstance(node, str) and node.startswith(ENV_REF_PREFIX):
        name = node[len(ENV_REF_PREFIX) :]
        if name not in env:
            problems.append((_path(path), f"environment variable {name} is not set"))
            return None
        secrets.add(env[name])
        return env[name]
    return node


def _apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, (path, kind) in ENV_OVERRIDES.items():
        if name not in env or env[name] == "":
            continue
        value: Any = env[name]
        if kind == "csv":
            value = [part.strip() for part in value.split(",") if part.strip()]
        node = data
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[path[-1]] = value


def _check_sections(data: dict[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for section, allowed in (
        ("litellm_settings", SUPPORTED_LITELLM_SETTINGS),
        ("router_settings", SUPPORTED_ROUTER_SETTINGS),
    ):
        value = data.get(section)
        if not isinstance(value, dict):
            continue
        for key in sorted(set(value) - allowed):
            problems.append(
                (
                    f"{section}.{key}",
                    f"not supported by RouteIQ; supported: {', '.join(sorted(allowed))}",
                )
            )
    return problems


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _message(err: Any) -> str:
    message = str(err.get("msg", "invalid"))
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "too_short":
        return "must not be empty"
    return message.removeprefix("Value error, ")
