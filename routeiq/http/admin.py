"""Admin routes under ``/_admin``: refused unless an admin key is configured and presented.

``POST /_admin/reload`` re-reads the config source now and answers with the outcome, never a
bare "requested":

- ``local`` backend: this worker reloads and answers with its result (other workers see the
  file change on their own): 200 applied/unchanged, 422 rejected.
- ``etcd`` backend: the request goes to the leader's publish path (``<prefix>/reload-request``,
  also when this worker leads), and this worker waits, at most ``RELOAD_ANSWER_S``, for the
  leader's answer: 200 published/unchanged, 422 rejected; 409 when the leader published a file
  that differs from this worker's (only the leader's file is published: edit it there, or
  everywhere); 503 with no leader (or etcd unreachable); 504 when the leader did not answer in
  time. Each answer names the leader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from routeiq.config.reload import digest_of
from routeiq.errors import ConfigError, describe
from routeiq.http.auth import bearer_token, key_matches
from routeiq.leadership.config_sync import EtcdConfigSync, FileWatcher
from routeiq.leadership.election import ElectionUnavailable
from routeiq.leadership.etcd_sync import read_source

if TYPE_CHECKING:
    from routeiq.app import GatewayApp
    from routeiq.assembly.gateway import Gateway

__all__ = ["RELOAD_ANSWER_S", "admin_routes", "reload_now"]

# How long a worker waits for the leader to publish (it validates the config, Router included).
RELOAD_ANSWER_S = 10.0


def admin_routes(app: FastAPI, holder: GatewayApp) -> None:
    async def reload(request: Request) -> Response:
        status, body = await reload_now(holder.gateway, request.headers)
        return JSONResponse(body, status_code=status)

    app.add_api_route(
        "/_admin/reload",
        reload,
        methods=["POST"],
        tags=["admin"],
        summary="Reload the config source now",
        openapi_extra={"security": [{"AdminKey": []}]},
        responses={
            200: {"description": "applied or unchanged (etcd: published by the leader, named)"},
            401: {"description": "missing or incorrect admin key"},
            403: {"description": "no admin key is configured"},
            409: {"description": "nothing to reload, or the leader's file differs from this one"},
            422: {"description": "the new config was rejected, with the reasons"},
            503: {"description": "not serving yet, no leader, or etcd is unreachable"},
            504: {"description": "the leader did not answer in time"},
        },
    )


async def reload_now(gateway: Gateway | None, headers: Any) -> tuple[int, dict[str, Any]]:
    """``POST /_admin/reload``, independent of the web framework: ``(status, JSON body)``."""
    runtime = None if gateway is None else gateway.runtime
    if gateway is None or runtime is None:
        return _error(503, "the gateway is not serving yet")
    key = runtime.config.admin_key
    if key is None:
        return _error(403, "admin routes are disabled: set routeiq.admin_key (ROUTEIQ_ADMIN_KEY)")
    if not key_matches(bearer_token(headers), key):
        return _error(401, "missing or incorrect admin key")
    sync = gateway.components.config_sync
    if isinstance(sync, FileWatcher):
        result = await sync.check(force=True)
        if result is None:
            return _error(409, "the config source cannot be read")
        return (200 if result.result != "rejected" else 422), result.to_dict()
    if isinstance(sync, EtcdConfigSync):
        return await _reload_through_leader(gateway, sync)
    return _error(
        409, "this gateway runs on its embedded default config: there is nothing to reload"
    )


async def _reload_through_leader(
    gateway: Gateway, sync: EtcdConfigSync
) -> tuple[int, dict[str, Any]]:
    leadership = gateway.components.leadership
    leader = None if leadership is None else leadership.view().get("leader_id")
    if leader is None:
        return _error(503, "no leader is elected right now (is etcd reachable?); retry shortly")
    try:
        request = await sync.request_reload()
    except ElectionUnavailable as exc:
        return _error(503, f"etcd is unreachable: {describe(exc)}")
    answer = await sync.wait_answer(request, within=RELOAD_ANSWER_S)
    if answer is None:
        status, error = _error(
            504, f"the leader ({leader}) did not answer within {RELOAD_ANSWER_S:g}s; retry"
        )
        return status, {**error, "leader": leader}
    body: dict[str, Any] = {
        "result": answer.result,
        "revision": answer.revision,
        "digest": answer.digest[:12],
        "error": answer.error,
        "leader": answer.leader,
    }
    if answer.result == "rejected":
        return 422, body
    own = None if sync.path is None else await _digest_of_file(sync)
    if own is not None and own != answer.digest:
        body["error"] = (
            f"the leader ({answer.leader}) published its own config file, which differs from "
            "this replica's: only the leader's file is published; change it there (or on every "
            "replica)"
        )
        return 409, body
    # This worker follows within a poll: answer once it serves what was published.
    with anyio.move_on_after(RELOAD_ANSWER_S):
        await sync.wait_followed(answer.revision)
    runtime = gateway.runtime
    body["applied_here"] = runtime is not None and runtime.revision >= answer.revision
    return 200, body


async def _digest_of_file(sync: EtcdConfigSync) -> str | None:
    path = sync.path
    if path is None:
        return None
    try:
        return digest_of(await anyio.to_thread.run_sync(read_source, path))
    except ConfigError:
        return None


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": message}
