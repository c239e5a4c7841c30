"""What serves requests: a config and the Router built from it, swapped as one value.

A request handler reads ``gateway.runtime`` once and uses that snapshot to the end, so a hot
reload (a new ``Runtime`` built beside the old one, then one assignment) never mixes the old
config with the new Router, and in-flight requests finish on the Router they started with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from routeiq.config.model import GatewayConfig
from routeiq.routing.picker import DeploymentPicker

__all__ = ["Runtime"]


@dataclass(frozen=True, slots=True)
class Runtime:
    config: GatewayConfig
    router: Any
    revision: int
    fast_path: bool
    digest: str
    # Fast-path picks for the plain model groups (``routeiq.routing.picker``), if any.
    picker: DeploymentPicker | None = None
    known_models: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        aliases = self.config.router_settings.get("model_group_alias") or {}
        object.__setattr__(self, "known_models", frozenset((*self.config.model_names, *aliases)))
