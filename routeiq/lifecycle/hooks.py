"""Operator-supplied startup hooks and services, named ``"module:attribute"`` in config.

They are RouteIQ's extension seam: a hook runs as a startup component at the end of its phase
(and may return an async context manager whose exit is its undo); a service runs under the
supervisor. Both receive a ``HookContext``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from routeiq.errors import ConfigError

if TYPE_CHECKING:
    from routeiq.config.model import GatewayConfig
    from routeiq.lifecycle.events import EventLog

__all__ = ["HookContext", "resolve_callable"]


@dataclass(frozen=True, slots=True)
class HookContext:
    phase: str
    config: GatewayConfig
    events: EventLog
    worker_id: str
    name: str | None = None


def resolve_callable(target: str, *, field: str) -> Any:
    """Import ``"module:attr.path"``; a bad target is a ``ConfigError`` naming ``field``."""
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError([(field, f"cannot import module {module_name!r}: {exc}")]) from None
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(
                [(field, f"{module_name!r} has no attribute {attr_path!r}")]
            ) from None
    if not callable(obj):
        raise ConfigError([(field, f"{target!r} is not callable")])
    return obj
