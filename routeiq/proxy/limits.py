"""Bounded work per request, and load shedding, enforced before any work is done.

Guarantees, all configured under ``routeiq.limits``:

- ``RequestGuard`` (an ASGI wrapper around the HTTP app) answers ``503`` with ``Retry-After``
  (counted in ``gateway_requests_shed_total{route}``) when ``max_inflight`` API requests are
  already in progress in this process, before it reads a byte of the body. It also cancels a
  request's work (the upstream call included, streaming or not) when its client disconnects
  (noticed within ``WATCH_AFTER_S`` plus a coarse timer's tick).
- ``read_json_body`` reads a body of at most ``max_body_bytes`` (``413``) within
  ``body_timeout_s`` (``408``: a client trickling bytes cannot hold a request open), parses it
  as JSON nested at most ``max_json_depth`` levels, and refuses numbers Python cannot hold
  (``400``).
- ``check_request_bounds`` refuses ``n``, ``best_of``, ``max_tokens``-like fields,
  ``top_logprobs``/``logprobs`` and ``input``/``prompt`` list sizes above their limits
  (``400`` naming the field).

Errors are OpenAI-style bodies (``routeiq.proxy.errors``). What is not checked here: the types
and shapes of fields (request validation does that) and upstream-side limits.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request

from routeiq.config.model import LimitsSettings
from routeiq.observability.catalog import API_ROUTES
from routeiq.proxy.coarse_timers import LaterCall, call_later, deadline
from routeiq.proxy.errors import ApiError, openai_error_body

if TYPE_CHECKING:
    from routeiq.app import GatewayApp

__all__ = [
    "DisconnectWatch",
    "RequestGuard",
    "check_json_depth",
    "check_request_bounds",
    "listen_backlog",
    "read_body",
    "read_json_body",
]

# Fields whose value is a count of generated things: name → which limit bounds it.
_COUNTS = {
    "n": "max_n",
    "best_of": "max_n",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "top_logprobs": "max_logprobs",
    "logprobs": "max_logprobs",
}
_ITEM_LISTS = ("input", "prompt")
# Only a \uD800-\uDFFF escape can put a surrogate in a parsed body (raw bytes must be UTF-8):
# without one, the costlier check is skipped.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


# --- body -------------------------------------------------------------------------------------


async def read_json_body(request: Request, limits: LimitsSettings) -> dict[str, Any]:
    """The request's JSON object, read and checked within ``limits`` (raises ``ApiError``)."""
    raw = await read_body(request, limits)
    try:
        body = json.loads(raw or b"null")
    except RecursionError:
        raise _too_deep(limits) from None
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, f"the request body is not valid UTF-8: {exc.reason}", code="invalid_json"
        ) from None
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
        raise ApiError(
            400, f"the request body is not valid JSON: {str(exc)[:200]}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_request")
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        raise ApiError(
            400,
            "the request body is not valid JSON: "
            "it holds a lone UTF-16 surrogate escape, which is not text",
            code="invalid_json",
        )
    check_json_depth(raw, body, limits)
    check_request_bounds(body, limits)
    return body


def _has_lone_surrogate(body: dict[str, Any]) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


async def read_body(request: Request, limits: LimitsSettings) -> bytes:
    """The raw body: at most ``max_body_bytes`` (413), received within ``body_timeout_s`` (408)."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    receive = request.receive  # its messages, not Starlette's stream(): an async generator
    try:
        with deadline(limits.body_timeout_s):
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ApiError(400, "the client disconnected while sending the body")
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body was not received within {limits.body_timeout_s:g}s",
            code="request_timeout",
        ) from None
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than {limit} bytes", code="request_too_large")


def _too_deep(limits: LimitsSettings) -> ApiError:
    return ApiError(
        400,
        f"the request body is nested deeper than {limits.max_json_depth} levels",
        code="invalid_json",
    )


def check_json_depth(raw: bytes, body: Any, limits: LimitsSettings) -> None:
    """Refuse a parsed body nested deeper than ``max_json_depth`` (``raw`` skips the walk when
    it holds too few brackets to be that deep)."""
    if raw.count(b"[") + raw.count(b"{") > limits.max_json_depth and (
        _depth(body) > limits.max_json_depth
    ):
        raise _too_deep(limits)


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_request_bounds(body: Mapping[str, Any], limits: LimitsSettings) -> None:
    """Refuse counts and sizes above ``limits`` (values of the wrong type are left to
    validation, which names them)."""
    for name, limit_name in _COUNTS.items():
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        limit = getattr(limits, limit_name)
        if value > limit:
            raise ApiError(
                400,
                f"'{name}' must be at most {limit} (routeiq.limits.{limit_name})",
                param=name,
                code="limit_exceeded",
            )
    for name in _ITEM_LISTS:
        value = body.get(name)
        if isinstance(value, list) and len(value) > limits.max_input_items:
            raise ApiError(
                400,
                f"'{name}' may hold at most {limits.max_input_items} items "
                "(routeiq.limits.max_input_items)",
                param=name,
                code="limit_exceeded",
            )


# --- in-flight cap and disconnects ------------------------------------------------------------


def listen_backlog(limits: LimitsSettings) -> int:
    """The listen backlog for ``max_inflight``: connections beyond the in-flight cap must wait
    in the kernel's accept queue and then get a 503, not a TCP reset from an overflowing queue
    (the kernel caps it at ``net.core.somaxconn``)."""
    return max(1024, 2 * limits.max_inflight)


class RequestGuard:
    """Wraps the HTTP app: sheds API requests past ``max_inflight`` and cancels a request's
    work when its client disconnects.

    hypercorn reports a client that went away as an ``http.disconnect`` message, but only to a
    ``receive`` call nobody makes while a handler awaits its upstream. From ``WATCH_AFTER_S``
    after the app has read the whole body, this wrapper keeps one ``receive`` call pending; a
    disconnect cancels the app's task, which closes the upstream connection (aiohttp, litellm's
    client) on the way out. The app's own ``receive`` calls then wait for that same disconnect.
    """

    def __init__(
        self, app: Any, holder: GatewayApp, *, hot: Mapping[str, Any] | None = None
    ) -> None:
        self._app = app
        self._holder = holder
        self._inflight = 0
        # POST routes served by their own ASGI app, bypassing ``app``'s middleware and router.
        self._hot = dict(hot or {})

    @property
    def inflight(self) -> int:
        return self._inflight

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        gateway = self._holder.gateway
        runtime = None if gateway is None else gateway.runtime
        route = _api_route(str(scope.get("path", ""))) if scope["type"] == "http" else None
        if route is None or gateway is None or runtime is None:
            # Not an API route (an unknown /v1 path is a cheap 404): nothing to guard.
            await self._app(scope, receive, send)
            return
        limits = runtime.config.routeiq.limits
        if self._inflight >= limits.max_inflight:
            if gateway.metrics is not None:
                # A bounded label: the client chooses the path, not the series.
                gateway.metrics.gateway_requests_shed_total.labels(route=route).inc()
            await _shed(send, limits)
            return
        app = self._app
        if scope.get("method") == "POST" and not scope.get("root_path"):
            app = self._hot.get(route, app)
        self._inflight += 1
        try:
            await _cancel_on_disconnect(app, scope, receive, send)
        finally:
            self._inflight -= 1


def _api_route(path: str) -> str | None:
    """The API route ``path`` belongs to (``/v1/models/{model}`` counts as ``/v1/models``)."""
    if path in API_ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models"
    return None


async def _shed(send: Any, limits: LimitsSettings) -> None:
    body = json.dumps(
        openai_error_body(
            503,
            "the gateway is at its in-flight request limit; retry later",
            code="overloaded",
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(limits.retry_after_s).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# How long after a request's body was read its disconnect watch starts (see ``DisconnectWatch``).
WATCH_AFTER_S = 0.05


class DisconnectWatch:
    """Calls ``on_disconnect`` once ``receive`` reports ``http.disconnect``; the caller calls
    ``cancel()`` when its response is done.

    The watching task is a bare asyncio task rather than an anyio task group: measured here, a
    task group costs ≈ 50 µs per request (its closing ``cancel()`` formats the task's repr). The
    gateway only runs on asyncio (hypercorn's asyncio worker). With ``after_s`` the task starts
    that much later (a coarse timer, ``routeiq.proxy.coarse_timers``): a disconnect waits in the
    server's receive queue until it is read, so it is still seen then, and a request answered
    sooner never starts a task (≈ 90k instructions per request, measured with callgrind).
    """

    __slots__ = ("_later", "_on_disconnect", "_receive", "_task")

    def __init__(
        self, receive: Any, on_disconnect: Callable[[], None], *, after_s: float = 0.0
    ) -> None:
        self._receive, self._on_disconnect = receive, on_disconnect
        self._task: asyncio.Task[None] | None = None
        self._later: LaterCall | None = None
        if after_s > 0:
            self._later = call_later(after_s, self._start)
        else:
            self._start()

    def _start(self) -> None:
        self._later = None
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._on_disconnect()

    def cancel(self) -> None:
        if self._later is not None:
            self._later.cancel()
        if self._task is not None:
            self._task.cancel()


async def _cancel_on_disconnect(app: Any, scope: Scope, receive: Any, send: Any) -> None:
    """Run ``app``; cancel it if the client disconnects before the response's last byte."""
    disconnected = asyncio.Event()
    body_read = responded = False
    watcher: DisconnectWatch | None = None

    with anyio.CancelScope() as request_scope:

        def on_disconnect() -> None:
            disconnected.set()
            if not responded:  # a disconnect after the last byte is just the connection closing
                request_scope.cancel()

        async def app_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                responded = True
            await send(message)

        async def app_receive() -> Message:
            nonlocal body_read, watcher
            if body_read or disconnected.is_set():
                await disconnected.wait()
                return {"type": "http.disconnect"}
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                body_read = True
                watcher = DisconnectWatch(receive, on_disconnect, after_s=WATCH_AFTER_S)
            return message

        try:
            await app(scope, app_receive, app_send)
        finally:
            if watcher is not None:
                watcher.cancel()
