"""HTTP routes for health, lifecycle introspection and metrics; mounts the OpenAI API.

Every handler reads the gateway through its ``GatewayApp`` holder at request time, so a route
never sees a half-built gateway: before the lifespan has built one, it answers 503.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from routeiq.http.admin import admin_routes
from routeiq.http.control import (
    Access,
    read_access,
    redact_lifecycle,
    redact_metrics,
    redact_startup,
)
from routeiq.mcp.admin import mcp_admin_routes
from routeiq.mcp.endpoint import McpEndpoint
from routeiq.proxy.errors import openai_error_response
from routeiq.proxy.routes import openai_routes

if TYPE_CHECKING:
    from routeiq.app import GatewayApp
    from routeiq.lifecycle.gateway import Gateway

__all__ = ["build_http_app"]


def build_http_app(holder: GatewayApp) -> Starlette:
    def gateway_or_503() -> Gateway:
        gateway = holder.gateway
        if gateway is None:
            raise HTTPException(503, "the gateway has not started")
        return gateway

    async def live(_: Request) -> Response:
        gateway = holder.gateway
        if gateway is None:
            return JSONResponse({"status": "starting", "state": "created"}, status_code=200)
        status = gateway.status()
        live = status.live and gateway_leadership_healthy(gateway)
        body = {"status": "ok" if live else "failed", "state": status.state}
        if not live:
            body["error"] = status.error or "leadership not renewed within its deadline"
        return JSONResponse(body, status_code=200 if live else 503)

    async def ready(_: Request) -> Response:
        gateway = holder.gateway
        state = "created" if gateway is None else gateway.state
        ok = gateway is not None and gateway.status().ready
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "state": state}, 200 if ok else 503
        )

    async def lifecycle(request: Request) -> Response:
        gateway = gateway_or_503()
        access = _access(request, gateway)
        status = gateway.status()
        since = _int_param(request, "since", 0)
        limit = _int_param(request, "limit", 1000)
        events = [e.to_dict() for e in gateway.events.events[since : since + limit]]
        if access == "redacted":
            return JSONResponse(redact_lifecycle(status, leadership_view(gateway), events))
        return JSONResponse(
            {
                "worker_id": gateway.worker_id,
                "pid": gateway.events.pid,
                "state": status.state,
                "ready": status.ready,
                "live": status.live,
                "failed_phase": status.failed_phase,
                "error": status.error,
                "leadership": leadership_view(gateway),
                "events": events,
            }
        )

    async def startup(request: Request) -> Response:
        gateway = gateway_or_503()
        if _access(request, gateway) == "redacted":
            return JSONResponse(redact_startup(gateway.timeline.to_dict()))
        return JSONResponse({"worker_id": gateway.worker_id, **gateway.timeline.to_dict()})

    async def metrics(request: Request) -> Response:
        gateway = gateway_or_503()
        access = _access(request, gateway)
        if gateway.metrics is None:
            raise HTTPException(503, "metrics are not set up yet")
        body, content_type = gateway.metrics.render()
        if access == "redacted":
            body = redact_metrics(body, gateway.metrics.multiprocess_dir)
        return Response(body, media_type=content_type)

    routes = [
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/_lifecycle", lifecycle, methods=["GET"]),
        Route("/_lifecycle/startup", startup, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *openai_routes(holder),
        *admin_routes(holder),
        *mcp_admin_routes(holder),
        Route("/mcp", McpEndpoint(holder)),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/v1/"):
            return openai_error_response(exc.status_code, str(exc.detail))
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def leadership_view(gateway: Gateway) -> dict[str, Any]:
    elector = gateway.extensions.get("leadership")
    if elector is None:
        backend = gateway.config.routeiq.leadership.backend if gateway.config else None
        return {
            "backend": backend,
            "state": "not-started",
            "leader_id": None,
            "fencing_token": None,
        }
    view: dict[str, Any] = elector.view()
    return view


def gateway_leadership_healthy(gateway: Gateway) -> bool:
    elector = gateway.extensions.get("leadership")
    return True if elector is None else bool(elector.healthy())


def _access(request: Request, gateway: Gateway) -> Access:
    runtime = gateway.runtime
    access = read_access(request.headers, gateway.config if runtime is None else runtime.config)
    if access == "refused":
        raise HTTPException(401, "incorrect read key: send the read key or the admin key")
    return access


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"query parameter {name!r} must be an integer") from None
    if value < 0:
        raise HTTPException(400, f"query parameter {name!r} must be >= 0")
    return value
