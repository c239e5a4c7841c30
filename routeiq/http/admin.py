"""Admin routes under ``/_admin``: refused unless an admin key is configured and presented.

``POST /_admin/reload`` re-reads the config source now. With the ``local`` backend this worker
reloads and answers with the result (other workers see the file change on their own); with
``etcd`` the request goes to the leader through etcd and the answer is ``202 Accepted``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from routeiq.errors import describe
from routeiq.http.auth import bearer_token, key_matches
from routeiq.leadership.config_sync import EtcdConfigSync, FileWatcher
from routeiq.leadership.election import ElectionUnavailable

if TYPE_CHECKING:
    from routeiq.app import GatewayApp

__all__ = ["admin_routes"]


def admin_routes(app: FastAPI, holder: GatewayApp) -> None:
    async def reload(request: Request) -> Response:
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
        sync = gateway.extensions.get("config_sync")
        if isinstance(sync, FileWatcher):
            result = await sync.check(force=True)
            if result is None:
                return _error(409, "the config source cannot be read")
            return JSONResponse(
                result.to_dict(), status_code=200 if result.result != "rejected" else 422
            )
        if isinstance(sync, EtcdConfigSync):
            try:
                await sync.request_reload()
            except ElectionUnavailable as exc:
                return _error(503, f"etcd is unreachable: {describe(exc)}")
            sync.publish_soon()
            return JSONResponse(
                {"result": "requested", "revision": runtime.revision}, status_code=202
            )
        return _error(
            409, "this gateway runs on its embedded default config: there is nothing to reload"
        )

    app.add_api_route(
        "/_admin/reload",
        reload,
        methods=["POST"],
        tags=["admin"],
        summary="Reload the config source now",
        openapi_extra={"security": [{"AdminKey": []}]},
        responses={
            200: {"description": "reloaded (or unchanged) on this worker"},
            202: {"description": "requested from the leader (etcd backend)"},
            401: {"description": "missing or incorrect admin key"},
            403: {"description": "no admin key is configured"},
            409: {"description": "nothing to reload, or the source cannot be read"},
            422: {"description": "the new config was rejected"},
            503: {"description": "not serving yet, or etcd is unreachable"},
        },
    )


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)
