"""``gateway_mcp_server_up{server}`` as a projection of the event log.

A session's ``service`` events (component ``mcp:<server>``, trigger ``up``/``down``) set the
gauge to 1/0; a ``mcp_server_removed`` config event removes the server's series, so a removed
server neither alerts nor lingers on dashboards. Tool-call counters and latency are recorded
by the aggregator per call (they are traffic, not lifecycle).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from routeiq.lifecycle.events import Event, EventKind

if TYPE_CHECKING:
    from routeiq.observability.metrics import GatewayMetrics

__all__ = ["McpMetricsProjection"]


class McpMetricsProjection:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._up = metrics.gateway_mcp_server_up

    def __call__(self, event: Event) -> None:
        if event.kind == EventKind.SERVICE and (event.component or "").startswith("mcp:"):
            server = (event.component or "").removeprefix("mcp:")
            if event.trigger == "up":
                self._up.labels(server=server).set(1)
            elif event.trigger == "down":
                self._up.labels(server=server).set(0)
        elif event.kind == EventKind.CONFIG and event.trigger == "mcp_server_removed":
            server = str(event.attributes.get("server", ""))
            with contextlib.suppress(KeyError):  # never connected on this worker
                self._up.remove(server)
