"""``/_admin/mcp/servers``: list, create, replace and delete registered MCP servers.

Admin key required (refused when none is configured), like every ``/_admin`` route. Bodies are
``McpServerSpec`` JSON; a bad body is a 400 naming each bad field, a URL the SSRF guard refuses
is a 400 saying how to allow it, a server declared in the config is read-only (409). A change
is written to the durable store (with etcd: submitted to the leader, which writes it under its
fencing token); the answer is 201/200/204 once this replica serves the change, or 202 if it is
still pending. Header values are never returned: only their names.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from routeiq.errors import describe
from routeiq.http.auth import bearer_token, key_matches
from routeiq.mcp.component import McpGateway, RegistryConflict
from routeiq.mcp.config import McpServerSpec
from routeiq.mcp.guard import UrlRefused
from routeiq.mcp.store import StoreUnavailable

if TYPE_CHECKING:
    from routeiq.app import GatewayApp

__all__ = ["mcp_admin_routes"]

PATH = "/_admin/mcp/servers"


def mcp_admin_routes(holder: GatewayApp) -> list[Route]:
    def authorize(request: Request) -> McpGateway | Response:
        gateway = holder.gateway
        runtime = None if gateway is None else gateway.runtime
        if gateway is None or runtime is None:
            return _error(503, "the gateway is not serving yet")
        key = runtime.config.admin_key
        if key is None:
            return _error(
                403, "admin routes are disabled: set routeiq.admin_key (ROUTEIQ_ADMIN_KEY)"
            )
        if not key_matches(bearer_token(request.headers), key):
            return _error(401, "missing or incorrect admin key")
        mcp = gateway.components.mcp
        if not isinstance(mcp, McpGateway):
            return _error(404, "the MCP gateway is disabled (routeiq.mcp.enabled)")
        return mcp

    async def list_servers(request: Request) -> Response:
        mcp = authorize(request)
        if isinstance(mcp, Response):
            return mcp
        return JSONResponse({"servers": mcp.view()})

    async def get_server(request: Request) -> Response:
        mcp = authorize(request)
        if isinstance(mcp, Response):
            return mcp
        name = request.path_params["name"]
        for row in mcp.view():
            if row["name"] == name:
                return JSONResponse(row)
        return _error(404, f"no MCP server named {name!r}")

    async def create(request: Request) -> Response:
        mcp = authorize(request)
        if isinstance(mcp, Response):
            return mcp
        spec = await _read_spec(request, None)
        if isinstance(spec, Response):
            return spec
        if spec.name in mcp.entries:
            return _error(409, f"an MCP server named {spec.name!r} exists: PUT to replace it")
        return await _change(mcp, spec, created=True)

    async def replace(request: Request) -> Response:
        mcp = authorize(request)
        if isinstance(mcp, Response):
            return mcp
        spec = await _read_spec(request, request.path_params["name"])
        if isinstance(spec, Response):
            return spec
        return await _change(mcp, spec, created=spec.name not in mcp.entries)

    async def delete(request: Request) -> Response:
        mcp = authorize(request)
        if isinstance(mcp, Response):
            return mcp
        name = request.path_params["name"]
        if name not in mcp.entries:
            return _error(404, f"no MCP server named {name!r}")
        try:
            applied = await mcp.submit_delete(name)
        except RegistryConflict as exc:
            return _error(409, str(exc))
        except (StoreUnavailable, TimeoutError) as exc:
            return _error(503, f"the MCP registry is unavailable: {describe(exc)}")
        if not applied:
            return JSONResponse({"name": name, "result": "pending"}, status_code=202)
        return Response(status_code=204)

    return [
        Route(PATH, list_servers, methods=["GET"]),
        Route(PATH, create, methods=["POST"]),
        Route(PATH + "/{name}", get_server, methods=["GET"]),
        Route(PATH + "/{name}", replace, methods=["PUT"]),
        Route(PATH + "/{name}", delete, methods=["DELETE"]),
    ]


async def _read_spec(request: Request, name: str | None) -> McpServerSpec | Response:
    try:
        body: Any = json.loads(await request.body())
    except ValueError:
        return _error(400, "the body must be a JSON object")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    if name is not None and body.setdefault("name", name) != name:
        return _error(400, f"name: the body says {body['name']!r}, the path {name!r}")
    try:
        return McpServerSpec.model_validate(body)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        ]
        return _error(400, "; ".join(problems))


async def _change(mcp: McpGateway, spec: McpServerSpec, *, created: bool) -> Response:
    try:
        applied = await mcp.submit_put(spec)
    except UrlRefused as exc:
        return _error(400, f"url: {exc}")
    except RegistryConflict as exc:
        return _error(409, str(exc))
    except (StoreUnavailable, TimeoutError) as exc:
        return _error(503, f"the MCP registry is unavailable: {describe(exc)}")
    body = {**spec.public_view(), "result": "applied" if applied else "pending"}
    return JSONResponse(body, status_code=(201 if created else 200) if applied else 202)


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)
