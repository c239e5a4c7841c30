"""The composition root: the one place that builds RouteIQ's parts and wires them together.

Every other package stays ignorant of its siblings' assembly: ``routeiq.lifecycle`` runs phases
without knowing what they build, and the feature packages (routing, proxy, observability,
leadership, mcp, http) never import this one at run time.
"""

from __future__ import annotations

from routeiq.assembly.components import Components
from routeiq.assembly.gateway import Gateway

__all__ = ["Components", "Gateway"]
