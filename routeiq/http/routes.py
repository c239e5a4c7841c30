"""The gateway's FastAPI app: health, lifecycle introspection, metrics, admin and the OpenAI API.

Every handler reads the gateway through its ``GatewayApp`` holder at request time, so a route
never sees a half-built gateway: before the lifespan has built one, it answers 503.

``/openapi.json`` and ``/docs`` describe every route, with the master key and the admin key as
HTTP bearer security schemes. FastAPI's own errors (no such route, wrong method, an invalid query
parameter) answer in OpenAI's error format under ``/v1/`` and as ``{"error": ...}`` elsewhere.
Every response carries an ``x-request-id`` header (``routeiq.http.request_id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
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
from routeiq.http.request_id import ASGIApp, IdentifiedEndpoint, RequestIdMiddleware
from routeiq.http.schemas import ErrorBody, HealthStatus
from routeiq.mcp.admin import mcp_admin_routes, mcp_openapi_schemas
from routeiq.mcp.endpoint import McpEndpoint
from routeiq.proxy.errors import openai_error_response
from routeiq.proxy.routes import openai_routes
from routeiq.proxy.schemas import openapi_schemas

if TYPE_CHECKING:
    from routeiq.app import GatewayApp
    from routeiq.assembly.gateway import Gateway

__all__ = ["SECURITY_SCHEMES", "HttpApp", "build_http_app"]

SECURITY_SCHEMES: dict[str, Any] = {
    "MasterKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "routeiq.master_key (ROUTEIQ_MASTER_KEY); not required when none is set",
    },
    "AdminKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "routeiq.admin_key (ROUTEIQ_ADMIN_KEY); admin routes refuse without one",
    },
}


@dataclass(frozen=True, slots=True)
class HttpApp:
    """The gateway's HTTP app, and a shorter way in for the three OpenAI POST routes.

    ``hot`` maps each POST route's path to its handler served as an ``IdentifiedEndpoint``,
    skipping the FastAPI/Starlette middleware stack and the router (measured ≈ 30–40 µs per
    request) and Starlette's request/response adapter. That stack adds nothing to these routes:
    their handler turns every exception into an OpenAI error response and accounts for itself
    (``routeiq.proxy.routes``), and ``IdentifiedEndpoint`` gives them the request id and the net
    the request-id middleware gives everything else.
    """

    app: FastAPI
    hot: Mapping[str, ASGIApp]


def build_http_app(holder: GatewayApp) -> HttpApp:
    app = FastAPI(
        title="RouteIQ",
        summary="An OpenAI-compatible LLM gateway with an event-sourced lifecycle",
        version="0.1.0",
        redoc_url=None,
        # The gateway traces and measures itself, per app instance (routeiq.observability);
        # FastAPI's native telemetry would use OpenTelemetry's process-global providers.
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )

    def gateway_or_503() -> Gateway:
        gateway = holder.gateway
        if gateway is None:
            raise HTTPException(503, "the gateway has not started")
        return gateway

    @app.get(
        "/health/live",
        tags=["health"],
        response_model=HealthStatus,
        responses={503: {"model": HealthStatus, "description": "the gateway has failed"}},
    )
    async def live() -> Response:
        """Liveness: false once the gateway failed or lost track of its leadership."""
        gateway = holder.gateway
        if gateway is None:
            return JSONResponse({"status": "starting", "state": "created"}, status_code=200)
        status = gateway.status()
        live = status.live and gateway_leadership_healthy(gateway)
        body = {"status": "ok" if live else "failed", "state": status.state}
        if not live:
            body["error"] = status.error or "leadership not renewed within its deadline"
        return JSONResponse(body, status_code=200 if live else 503)

    @app.get(
        "/health/ready",
        tags=["health"],
        response_model=HealthStatus,
        responses={503: {"model": HealthStatus, "description": "not serving (yet or any more)"}},
    )
    async def ready() -> Response:
        """Readiness: true while the gateway is serving."""
        gateway = holder.gateway
        state = "created" if gateway is None else gateway.state
        ok = gateway is not None and gateway.status().ready
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "state": state}, 200 if ok else 503
        )

    @app.get("/_lifecycle", tags=["lifecycle"], responses={503: {"model": ErrorBody}})
    async def lifecycle(
        request: Request,
        since: Annotated[int, Query(ge=0, description="first event sequence number")] = 0,
        limit: Annotated[int, Query(ge=0, description="at most this many events")] = 1000,
    ) -> Response:
        """The (lifecycle, leadership) state pair and the event log from ``since``."""
        gateway = gateway_or_503()
        access = _access(request, gateway)
        status = gateway.status()
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

    @app.get("/_lifecycle/startup", tags=["lifecycle"], responses={503: {"model": ErrorBody}})
    async def startup(request: Request) -> Response:
        """The startup timeline, one entry per component (redacted without the read key)."""
        gateway = gateway_or_503()
        if _access(request, gateway) == "redacted":
            return JSONResponse(redact_startup(gateway.timeline.to_dict()))
        return JSONResponse({"worker_id": gateway.worker_id, **gateway.timeline.to_dict()})

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            503: {"model": ErrorBody},
        },
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this worker (of the process group in multiprocess mode)."""
        gateway = gateway_or_503()
        access = _access(request, gateway)
        if gateway.metrics is None:
            raise HTTPException(503, "metrics are not set up yet")
        body, content_type = gateway.metrics.render()
        if access == "redacted":
            body = redact_metrics(body, gateway.metrics.multiprocess_dir)
        return Response(body, media_type=content_type)

    described, hot = openai_routes(app, holder)
    admin_routes(app, holder)
    mcp_admin_routes(app, holder)
    app.router.routes.append(Route("/mcp", McpEndpoint(holder)))

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # pragma: no cover - registered for it only
            raise exc
        if request.url.path.startswith("/v1/"):
            return openai_error_response(exc.status_code, str(exc.detail))
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):  # pragma: no cover
            raise exc
        first = exc.errors()[0]
        where, *path = first.get("loc", ("request",))
        param = ".".join(str(p) for p in path) or str(where)
        message = f"{where} parameter {param!r}: {first.get('msg', 'is invalid')}"
        if request.url.path.startswith("/v1/"):
            return openai_error_response(400, message, param=param)
        return JSONResponse({"error": message}, status_code=400)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(RequestIdMiddleware)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=[*app.routes, *described],
            )
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
            components.setdefault("schemas", {}).update(openapi_schemas())
            components["schemas"].update(mcp_openapi_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return HttpApp(app, {path: IdentifiedEndpoint(serve) for path, serve in hot.items()})


def leadership_view(gateway: Gateway) -> dict[str, Any]:
    elector = gateway.components.leadership
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
    elector = gateway.components.leadership
    return True if elector is None else elector.healthy()


def _access(request: Request, gateway: Gateway) -> Access:
    runtime = gateway.runtime
    access = read_access(request.headers, gateway.config if runtime is None else runtime.config)
    if access == "refused":
        raise HTTPException(401, "incorrect read key: send the read key or the admin key")
    return access
