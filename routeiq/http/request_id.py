"""Request ids, and the last line of defence against an unexpected exception.

Guarantees: every HTTP response carries an ``x-request-id`` header (the client's own, when it
sent a well-formed one, else a fresh id), readable by handlers through ``request_id(scope)``.
An exception that escapes every handler is logged once, with its traceback and the request id,
and answered as an OpenAI-style 500 that names the request id and nothing else about the
failure; cancellation is never caught. The OpenAI routes account for their own failures (see
``routeiq.proxy.routes``); this is the net under everything else.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from routeiq.proxy.errors import ApiError

__all__ = ["IdentifiedEndpoint", "RequestIdMiddleware", "internal_error", "request_id"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SCOPE_KEY = "routeiq.request_id"
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

log = logging.getLogger("routeiq.http")


def request_id(scope: Scope) -> str:
    """The id of the request in ``scope`` (one is made if the middleware did not run)."""
    value = scope.get(_SCOPE_KEY)
    if not isinstance(value, str):
        value = scope[_SCOPE_KEY] = _new_id()
    return value


def internal_error(request_id: str) -> ApiError:
    """The client's view of a bug: a 500 that names the request id to report."""
    return ApiError(
        500,
        f"the gateway failed to handle this request; report request id {request_id}",
        code="internal_error",
    )


class _Ids:
    """``req_<random per process><counter>``: unique without a syscall per request."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prefix = f"req_{secrets.token_hex(8)}"
        self._next = itertools.count(1).__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():08x}"


# One sequence per process, for the middleware and the hot endpoints alike. A worker forked by
# ``routeiq serve --workers N`` starts its own, not a copy of its master's.
_new_id = _Ids()
os.register_at_fork(after_in_child=_new_id.reset)


def _identify(scope: Scope) -> str:
    """The request's id (the client's own when well formed, else a fresh one), set in ``scope``."""
    rid = scope[_SCOPE_KEY] = _client_id(scope) or _new_id()
    return rid


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _identify(scope)
        header = (b"x-request-id", rid.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                message["headers"] = [*headers, header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            _log_unexpected(scope, rid, exc)
            if started:
                return  # the status line is gone: the client sees a cut response
            response = internal_error(rid).response()
            await response(scope, receive, send_with_id)


class IdentifiedEndpoint:
    """A request → response endpoint as an ASGI app, with this module's guarantees and nothing
    between: what Starlette's ``request_response`` under ``RequestIdMiddleware`` does, without
    their three wrappers of ``send`` (the hot OpenAI routes, ``routeiq.http.routes.HttpApp``).

    The id goes into the response's own headers. An exception from the endpoint is answered as
    the middleware answers it; one from sending the response is logged and ends the response
    (a response sends its status line first, so by then there is no status left to send).
    """

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = _identify(scope)
        try:
            response = await self._endpoint(Request(scope, receive, send))
        except Exception as exc:
            _log_unexpected(scope, rid, exc)
            response = internal_error(rid).response()
        headers = response.raw_headers
        if any(name == b"x-request-id" for name, _ in headers):
            headers[:] = [h for h in headers if h[0] != b"x-request-id"]
        headers.append((b"x-request-id", rid.encode()))
        try:
            await response(scope, receive, send)
        except Exception as exc:
            _log_unexpected(scope, rid, exc)


def _log_unexpected(scope: Scope, rid: str, exc: BaseException) -> None:
    log.error(
        "unexpected error answering %s %s (request id %s)",
        scope.get("method"),
        scope.get("path"),
        rid,
        exc_info=exc,
    )


def _client_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return value.decode() if _CLIENT_ID.fullmatch(value) else None
    return None
