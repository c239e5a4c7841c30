"""``/mcp``: the ASGI entry of the MCP gateway (streamable HTTP), behind the master key.

Before the gateway serves (or with ``routeiq.mcp.enabled: false``) it answers 503/404 JSON;
a missing or wrong key is a 401. Everything else is the SDK's streamable-HTTP transport,
served by the ``McpAggregator`` of the running gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from routeiq.http.auth import bearer_token, key_matches

if TYPE_CHECKING:
    from routeiq.app import GatewayApp

__all__ = ["McpEndpoint"]


class McpEndpoint:
    """An ASGI app; mount it at ``/mcp``."""

    def __init__(self, holder: GatewayApp) -> None:
        self._holder = holder

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        gateway = self._holder.gateway
        runtime = None if gateway is None else gateway.runtime
        mcp = None if gateway is None else gateway.components.mcp
        if gateway is None or runtime is None or gateway.state != "serving":
            response = _error(503, "the gateway is not serving")
        elif mcp is None:
            response = _error(404, "the MCP gateway is disabled (routeiq.mcp.enabled)")
        else:
            key = runtime.config.master_key
            if key is None or key_matches(bearer_token(Headers(scope=scope)), key):
                await mcp.aggregator.handle(scope, receive, send)
                return
            response = _error(401, "missing or incorrect key: send Authorization: Bearer <key>")
        await response(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}},
        status_code=status,
    )
