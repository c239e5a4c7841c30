"""The MCP server behind ``/mcp``: the namespaced union of the registered servers' tools.

``tools/list`` answers ``<server>.<tool>`` for every tool of every connected server that its
allow/deny lists expose (server names hold no dot, so names cannot collide). ``tools/call``
validates the arguments against the tool's input schema (a JSON-RPC ``-32602`` error if they
do not match, before anything is forwarded), forwards the call to the owning server under the
per-call timeout and passes its result back as it came, including ``isError`` results;
JSON-RPC errors from the server are passed back with their code, message and data. When the
union changes (a server comes up or goes down, a server announced ``list_changed``, the
registry changed) subscribers of ``subscriptions/listen`` get ``notifications/tools/list_changed``.

The endpoint is stateless (the SDK's stateless streamable HTTP): it hands out no
``Mcp-Session-Id``, so a client's requests may land on any worker of a process group or any
replica behind a load balancer; each worker serves the same union from its own sessions to the
registered servers. A ``subscriptions/listen`` stream is one request, held by one worker, which
announces its own union's changes. Given up: a pre-2026 (``initialize``) client gets no standing
GET stream, so no server-pushed notifications; it sees changes by listing again.

Each call is counted in ``gateway_mcp_tool_calls_total{server,tool,outcome}`` (labels bounded:
an unknown tool is counted as server and tool ``unknown``), timed in
``gateway_mcp_tool_call_duration_seconds{server}`` and traced as an ``execute_tool`` span.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus

from routeiq.errors import describe
from routeiq.mcp.upstream import ServerUnavailable, UpstreamSession

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp_types import (
        CallToolRequestParams,
        CallToolResult,
        ListToolsResult,
        PaginatedRequestParams,
        Tool,
    )

    from routeiq.observability.metrics import GatewayMetrics

__all__ = ["McpAggregator"]

TRACER = "routeiq.mcp"

Sessions = Callable[[], Mapping[str, UpstreamSession]]


class McpAggregator:
    def __init__(
        self,
        sessions: Sessions,
        *,
        default_timeout_s: float,
        metrics: GatewayMetrics | None,
        tracer_provider: Any,
    ) -> None:
        self._sessions = sessions
        self._default_timeout_s = default_timeout_s
        self._metrics = metrics
        self._tracer = (
            None if tracer_provider is None else tracer_provider.get_tracer("routeiq.mcp")
        )
        self._changed = anyio.Event()
        self._validators: dict[tuple[str, int], Any] = {}
        self._manager: StreamableHTTPSessionManager | None = None
        self.notifications_sent = 0

    # --- the union ------------------------------------------------------------------------------

    def union(self) -> dict[str, tuple[UpstreamSession, Tool]]:
        found: dict[str, tuple[UpstreamSession, Tool]] = {}
        for name, session in sorted(self._sessions().items()):
            if not session.up:
                continue
            for tool in session.tools.values():
                found[f"{name}.{tool.name}"] = (session, tool)
        return found

    def notify_changed(self) -> None:
        """The union may have changed: tell subscribed clients (never blocks)."""
        self._changed.set()

    # --- the MCP server ------------------------------------------------------------------------

    def build(self) -> StreamableHTTPSessionManager:
        from mcp.server.lowlevel.server import Server
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler

        self._bus = InMemorySubscriptionBus()
        server: Server[Any] = Server(
            "routeiq",
            instructions="Tools of the MCP servers registered at this gateway, as <server>.<tool>.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self._bus),
        )
        # Stateless: no request depends on the worker or replica that served an earlier one
        # (2026-07-28 clients are per request anyway). The gateway checks the key itself.
        self._manager = StreamableHTTPSessionManager(app=server, stateless=True)
        return self._manager

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The endpoint's service: runs the session manager and fans out list changes."""
        from mcp.server.subscriptions import ToolsListChanged

        manager = self._manager
        if manager is None:
            raise RuntimeError("McpAggregator.build() must run before the service starts")
        async with manager.run():
            task_status.started()
            seen = self._fingerprint()
            while True:
                await self._changed.wait()
                self._changed = anyio.Event()
                now = self._fingerprint()
                if now != seen:
                    seen = now
                    await self._bus.publish(ToolsListChanged())
                    self.notifications_sent += 1

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        manager = self._manager
        if manager is None:
            raise RuntimeError("the MCP endpoint is not built")
        await manager.handle_request(scope, receive, send)

    def _fingerprint(self) -> tuple[tuple[str, int], ...]:
        return tuple((name, id(tool)) for name, (_s, tool) in self.union().items())

    async def _list_tools(
        self, _ctx: ServerRequestContext[Any], _params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        from mcp_types import ListToolsResult

        tools = [
            tool.model_copy(update={"name": name}) for name, (_s, tool) in self.union().items()
        ]
        return ListToolsResult(tools=tools)

    async def _call_tool(
        self, _ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult:
        from mcp.shared.exceptions import MCPError
        from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, REQUEST_TIMEOUT

        public = params.name
        arguments = dict(params.arguments or {})
        found = self.union().get(public)
        if found is None:
            self._count("unknown", "unknown", "unknown_tool")
            raise MCPError(INVALID_PARAMS, f"unknown tool {public!r}: see tools/list")
        session, tool = found
        server, name = session.name, tool.name
        problem = self._validate(server, tool, arguments)
        if problem is not None:
            self._count(server, name, "invalid_arguments")
            raise MCPError(INVALID_PARAMS, f"invalid arguments for {public}: {problem}")
        timeout_s = session.spec.call_timeout_s or self._default_timeout_s
        start = time.perf_counter()
        error: MCPError | None
        with self._span(public, session) as span:
            try:
                result = await session.call(name, arguments, timeout_s)
            except TimeoutError:
                error = MCPError(REQUEST_TIMEOUT, f"{public} did not answer within {timeout_s:g}s")
                outcome = "timeout"
            except MCPError as exc:
                error, outcome = MCPError(exc.code, exc.message, exc.data), "upstream_error"
            except ServerUnavailable as exc:
                error, outcome = MCPError(INTERNAL_ERROR, str(exc)), "unavailable"
            except Exception as exc:  # the session broke mid-call (cancellation passes through)
                error = MCPError(INTERNAL_ERROR, f"{public} failed: {describe(exc)}")
                outcome = "upstream_error"
            else:
                error, outcome = None, "tool_error" if result.is_error else "ok"
            self._count(server, name, outcome, time.perf_counter() - start)
            if span is not None and outcome != "ok":
                span.set_attribute("error.type", outcome)
        if error is not None:
            raise error
        return result.model_copy(update={"meta": None})

    # --- helpers -------------------------------------------------------------------------------

    def _validate(self, server: str, tool: Tool, arguments: dict[str, Any]) -> str | None:
        from jsonschema import exceptions, validators

        key = (server, id(tool))
        validator = self._validators.get(key)
        if validator is None:
            schema = tool.input_schema
            try:
                cls = validators.validator_for(schema)
                cls.check_schema(schema)
            except exceptions.SchemaError:
                return None  # the server's own schema is broken: let the server judge
            validator = cls(schema)
            if len(self._validators) > 4096:
                self._validators.clear()
            self._validators[key] = validator
        error = next(iter(validator.iter_errors(arguments)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{error.message} (at /{where})"

    def _count(self, server: str, tool: str, outcome: str, elapsed: float | None = None) -> None:
        if self._metrics is None:
            return
        calls = self._metrics.gateway_mcp_tool_calls_total
        calls.labels(server=server, tool=tool, outcome=outcome).inc()
        if elapsed is not None:
            duration = self._metrics.gateway_mcp_tool_call_duration_seconds
            duration.labels(server=server).observe(elapsed)

    def _span(self, public: str, session: UpstreamSession) -> Any:
        from contextlib import nullcontext

        if self._tracer is None:
            return nullcontext(None)
        from opentelemetry.trace import SpanKind

        url = urlsplit(session.spec.url)
        return self._tracer.start_as_current_span(
            f"tools/call {public}",
            kind=SpanKind.CLIENT,
            attributes={
                "mcp.method.name": "tools/call",
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": public,
                "server.address": url.hostname or "",
                "server.port": url.port or (443 if url.scheme == "https" else 80),
                "network.transport": "tcp",
                "network.protocol.name": "http",
            },
        )
