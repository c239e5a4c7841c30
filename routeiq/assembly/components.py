"""The optional parts a gateway is assembled from, as typed fields instead of a string-keyed map.

Each field is set by the phase that builds the part (``None`` until then, or when the config
does not ask for it) and read by attribute: the HTTP routes, the proxy and the MCP endpoint see
exactly what exists and of which type.
"""

from __future__ import annotations

from dataclasses import dataclass

from routeiq.assembly.reload import RouterReloader
from routeiq.leadership.config_sync import EtcdConfigSync, FileWatcher
from routeiq.leadership.service import LeadershipService
from routeiq.mcp.component import McpGateway
from routeiq.proxy.passthrough import Passthrough

__all__ = ["Components"]


@dataclass(slots=True)
class Components:
    passthrough: Passthrough | None = None  # patch phase, with routeiq.passthrough
    mcp: McpGateway | None = None  # patch phase, with routeiq.mcp.enabled
    reloader: RouterReloader | None = None  # serve phase
    config_sync: FileWatcher | EtcdConfigSync | None = None  # serve phase, with a config source
    leadership: LeadershipService | None = None  # serve phase
