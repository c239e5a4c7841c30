"""``/_admin/mcp/servers``: list, create, replace and delete registered MCP servers.

Admin key required (refused when none is configured), like every ``/_admin`` route. Bodies are
``McpServerSpec`` JSON; a bad body is a 400 naming each bad field, a URL the SSRF guard refuses
is a 400 saying how to allow it, a server declared in the config is read-only (409). A change
is written to the durable store (with etcd: submitted to the leader, which writes it under its
fencing token); the answer is 201/200/204 once this replica serves the change, or 202 if it is
still pending. Header values are never returned: only their names.

``/openapi.json`` describes the routes with the admin key's security scheme, ``McpServerSpec``
as the request body and the response models below (``mcp_openapi_schemas`` adds the request
body's schema to the document's components).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from routeiq.config.mcp import McpServerSpec
from routeiq.errors import describe
from routeiq.http.auth import bearer_token, key_matches
from routeiq.http.schemas import ErrorBody
from routeiq.mcp.component import McpGateway, RegistryConflict
from routeiq.mcp.guard import UrlRefused
from routeiq.mcp.store import StoreUnavailable

if TYPE_CHECKING:
    from routeiq.app import GatewayApp

__all__ = [
    "McpServerChange",
    "McpServerList",
    "McpServerPending",
    "McpServerView",
    "mcp_admin_routes",
    "mcp_openapi_schemas",
]

PATH = "/_admin/mcp/servers"
SECURITY: list[dict[str, list[str]]] = [{"AdminKey": []}]


class _PublicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    url: str
    headers: dict[str, str] = Field(description='each header\'s name, its value "<redacted>"')
    tools_allow: list[str] | None
    tools_deny: list[str]
    call_timeout_s: float | None


class McpServerView(_PublicSpec):
    """A registered MCP server as this replica serves it."""

    source: Literal["config", "registry"] = Field(
        description="declared in the config (read-only here) or registered at run time"
    )
    status: Literal["up", "down"]
    tools: list[str] = Field(description="the tools it exposes (after its allow/deny lists)")
    last_error: str | None


class McpServerList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    servers: list[McpServerView]


class McpServerChange(_PublicSpec):
    """The server as registered, and whether this replica serves it yet."""

    result: Literal["applied", "pending"]


class McpServerPending(BaseModel):
    """A deletion submitted but not yet served by this replica."""

    model_config = ConfigDict(extra="forbid")
    name: str
    result: Literal["pending"]


def mcp_openapi_schemas() -> dict[str, Any]:
    """``McpServerSpec``, the request body, as OpenAPI component schemas."""
    _, top = models_json_schema(
        [(McpServerSpec, "validation")], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas


_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/McpServerSpec"}}},
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or incorrect admin key"},
    403: {"model": ErrorBody, "description": "no admin key is configured"},
    404: {"model": ErrorBody, "description": "no such server, or the MCP gateway is disabled"},
    503: {"model": ErrorBody, "description": "not serving yet, or the registry is unavailable"},
}
_BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a bad body (each bad field named) or refused URL"},
    409: {"model": ErrorBody, "description": "the name exists, or is declared in the config"},
}
_PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": McpServerChange, "description": "submitted; this replica does not serve it yet"}
}


def mcp_admin_routes(app: FastAPI, holder: GatewayApp) -> None:
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

    async def get_server(request: Request, name: str) -> Response:
        mcp = authorize(request)
        if isinstance(mcp, Response):
            return mcp
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

    async def replace(request: Request, name: str) -> Response:
        mcp = authorize(request)
        if isinstance(mcp, Response):
            return mcp
        spec = await _read_spec(request, name)
        if isinstance(spec, Response):
            return spec
        return await _change(mcp, spec, created=spec.name not in mcp.entries)

    async def delete(request: Request, name: str) -> Response:
        mcp = authorize(request)
        if isinstance(mcp, Response):
            return mcp
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

    def route(path: str, endpoint: Any, method: str, summary: str, **extra: Any) -> None:
        app.add_api_route(
            path,
            endpoint,
            methods=[method],
            tags=["mcp"],
            summary=summary,
            openapi_extra={"security": SECURITY, **extra.pop("openapi_extra", {})},
            **extra,
        )

    one = PATH + "/{name}"
    route(
        PATH,
        list_servers,
        "GET",
        "List the registered MCP servers",
        responses={200: {"model": McpServerList}, **_ERRORS},
    )
    route(
        PATH,
        create,
        "POST",
        "Register an MCP server",
        status_code=201,
        responses={
            201: {"model": McpServerChange, "description": "registered and served"},
            **_PENDING,
            **_BAD_BODY,
            **_ERRORS,
        },
        openapi_extra={"requestBody": _BODY},
    )
    route(
        one,
        get_server,
        "GET",
        "Show one registered MCP server",
        responses={200: {"model": McpServerView}, **_ERRORS},
    )
    route(
        one,
        replace,
        "PUT",
        "Register or replace an MCP server",
        responses={
            200: {"model": McpServerChange, "description": "replaced and served"},
            201: {"model": McpServerChange, "description": "registered and served"},
            **_PENDING,
            **_BAD_BODY,
            **_ERRORS,
        },
        openapi_extra={"requestBody": _BODY},
    )
    route(
        one,
        delete,
        "DELETE",
        "Remove a registered MCP server",
        status_code=204,
        responses={
            204: {"description": "removed; this replica no longer serves it"},
            202: {"model": McpServerPending, "description": "submitted, not yet served"},
            409: _BAD_BODY[409],
            **_ERRORS,
        },
    )


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
