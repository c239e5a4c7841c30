"""Load a ``GatewayConfig`` from YAML (or the embedded default) and ``ROUTEIQ_*`` env vars.

The loader reports every problem it finds, each with its path, in one ``ConfigError``, and
raises nothing else for any file content (reading and parsing are bounded, see
``routeiq.config.source``); no message quotes an input value. ``routeiq check``, ``serve``,
the ASGI lifespan and hot reload all load through here. LiteLLM keys RouteIQ does not support
are dropped and listed in ``GatewayConfig.warnings`` (see ``routeiq.config.litellm_keys``). It
reads only the env mapping and the file it is given, so tests pass both explicitly.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from routeiq.config.checks import reference_problems
from routeiq.config.litellm_keys import (
    LITELLM_SETTINGS,
    ROUTER_SETTINGS,
    SECTIONS,
    classify,
    describe_ignored,
)
from routeiq.config.model import GatewayConfig
from routeiq.config.problems import path_of, validation_problems
from routeiq.config.secrets import is_secret_name, url_password
from routeiq.config.source import decode_config, parse_yaml, read_config_bytes
from routeiq.errors import ConfigError

__all__ = [
    "ENV_OVERRIDES",
    "SUPPORTED_LITELLM_SETTINGS",
    "SUPPORTED_ROUTER_SETTINGS",
    "embedded_default",
    "load_config",
    "parse_config",
    "parse_config_bytes",
    "parse_config_text",
]

ENV_REF_PREFIX = "os.environ/"

# env var -> (path in the config mapping, parser)
ENV_OVERRIDES: dict[str, tuple[tuple[str, ...], str]] = {
    "ROUTEIQ_MASTER_KEY": (("routeiq", "master_key"), "str"),
    "ROUTEIQ_ADMIN_KEY": (("routeiq", "admin_key"), "str"),
    "ROUTEIQ_READ_KEY": (("routeiq", "read_key"), "str"),
    "ROUTEIQ_LOG_LEVEL": (("routeiq", "log_level"), "str"),
    "ROUTEIQ_EVENT_LOG": (("routeiq", "event_log", "path"), "str"),
    "ROUTEIQ_LEADERSHIP_BACKEND": (("routeiq", "leadership", "backend"), "str"),
    "ROUTEIQ_LEADERSHIP_LOCK_PATH": (("routeiq", "leadership", "lock_path"), "str"),
    "ROUTEIQ_ETCD_ENDPOINTS": (("routeiq", "leadership", "etcd_endpoints"), "csv"),
    "ROUTEIQ_ETCD_CA_CERT": (("routeiq", "leadership", "etcd_ca_cert"), "str"),
    "ROUTEIQ_ETCD_CLIENT_CERT": (("routeiq", "leadership", "etcd_client_cert"), "str"),
    "ROUTEIQ_ETCD_CLIENT_KEY": (("routeiq", "leadership", "etcd_client_key"), "str"),
    "ROUTEIQ_ETCD_USER": (("routeiq", "leadership", "etcd_user"), "str"),
    "ROUTEIQ_ETCD_PASSWORD": (("routeiq", "leadership", "etcd_password"), "str"),
    "ROUTEIQ_DRAIN_DELAY_S": (("routeiq", "drain", "delay_s"), "str"),
    "ROUTEIQ_DRAIN_TIMEOUT_S": (("routeiq", "drain", "timeout_s"), "str"),
    "ROUTEIQ_METRICS_MULTIPROC_DIR": (("routeiq", "metrics", "multiproc_dir"), "str"),
}

# What RouteIQ applies of LiteLLM's sections (see routeiq.config.litellm_keys for every key).
SUPPORTED_LITELLM_SETTINGS = frozenset(
    k for k, rule in LITELLM_SETTINGS.items() if rule.status == "applied"
)
SUPPORTED_ROUTER_SETTINGS = frozenset(
    k for k, rule in ROUTER_SETTINGS.items() if rule.status == "applied"
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
    return parse_config_bytes(read_config_bytes(path, origin=origin), env, source=str(path))


def parse_config_bytes(data: bytes, env: Mapping[str, str], *, source: str) -> GatewayConfig:
    """The config in a file's raw content: decoded as UTF-8, then ``parse_config_text``."""
    return parse_config_text(decode_config(data, source=source), env, source=source)


def parse_config_text(text: str, env: Mapping[str, str], *, source: str) -> GatewayConfig:
    """The config in YAML ``text`` (a file's content), with its digest; used at startup, by
    ``routeiq check`` and by hot reload alike. Raises only ``ConfigError``."""
    data = parse_yaml(text, source=source)
    try:
        config = parse_config({} if data is None else data, env, source=source)
    except RecursionError:
        raise ConfigError([("", "the config is nested too deeply")], source=source) from None
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
    # Literal secrets of keys about to be dropped (``general_settings.database_url``) too.
    _secret_like_values(data, secrets)
    # Ignored LiteLLM keys go first: their env references need not be set.
    data = {k: dict(v) if k in SECTIONS and isinstance(v, dict) else v for k, v in data.items()}
    section_problems, warnings = _litellm_sections(data)
    problems += section_problems
    resolved = _resolve_env_refs(data, env, (), problems, secrets)
    _apply_env_overrides(resolved, env)
    # After the overrides: ``ROUTEIQ_ETCD_PASSWORD`` and the keys given by env are secrets too.
    _secret_like_values(resolved, secrets)
    general = resolved.get("general_settings")
    if isinstance(general, dict) and general.get("master_key"):
        # LiteLLM proxy's place for the key; moved so that no plain copy stays in the config.
        routeiq = resolved.setdefault("routeiq", {})
        master_key = general.pop("master_key")
        if isinstance(routeiq, dict):
            routeiq.setdefault("master_key", master_key)
    problems += reference_problems(resolved)
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(resolved)
    except ValidationError as exc:
        reported = {path for path, _ in problems}
        # A path already explained (a missing env reference) is not reported twice.
        problems += [p for p in validation_problems(exc) if p[0] not in reported]
    if problems or config is None:
        raise ConfigError(sorted(set(problems)), source=source)
    secrets.update(k for k in (config.master_key, config.admin_key) if k)
    for deployment in config.model_list:
        api_key = getattr(deployment.litellm_params, "api_key", None)
        if isinstance(api_key, str) and api_key:
            secrets.add(api_key)
    return config.model_copy(
        update={"source": source, "secrets": frozenset(secrets), "warnings": tuple(warnings)}
    )


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
            problems.append((path_of(path), f"environment variable {name} is not set"))
            return None
        secrets.add(env[name])
        return env[name]
    return node


def _secret_like_values(node: Any, secrets: set[str]) -> None:
    """Literal strings under secret-bearing keys (``api_key``, ``client_secret``,
    ``aws_secret_access_key``…, also in lists under them) and URL passwords anywhere are
    secrets too: redacted wherever they could appear. The rule is ``routeiq.config.secrets``,
    the one etcd config sync refuses literal secrets by."""
    stack: list[tuple[Any, bool]] = [(node, False)]
    while stack:
        item, secret_named = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, is_secret_name(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, secret_named) for v in item)
        elif isinstance(item, str) and item and not item.startswith(ENV_REF_PREFIX):
            password = item if secret_named else url_password(item)
            if password:
                secrets.add(password)


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


def _litellm_sections(
    data: dict[str, Any],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Errors (keys in no LiteLLM schema where litellm would refuse them) and warnings (keys
    RouteIQ does not support, removed from ``data`` so that nothing half-applies them)."""
    problems: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    for section in SECTIONS:
        value = data.get(section)
        if not isinstance(value, dict):
            continue
        warnings += describe_ignored(section, value)
        for key in list(value):
            rule = classify(section, str(key))
            if rule is None:
                problems.append(
                    (
                        f"{section}.{key}",
                        "not a litellm.Router setting (a typo?); the settings RouteIQ applies: "
                        "docs/migrating-from-litellm.md",
                    )
                )
            elif rule.status == "ignored":
                del value[key]
    return problems, warnings


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
