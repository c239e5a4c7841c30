"""One registered MCP server's session: connect, list its tools, stay healthy, reconnect.

``UpstreamSession.run`` is a supervised service. It reports ready at once, so a server that is
down never blocks startup; then it connects (to the addresses the SSRF guard resolved and
checked, never to a second resolution of the name: ``routeiq.mcp.pinning``), lists the
server's tools, and keeps the session: a ``subscriptions/listen`` stream (or, on a pre-2026
server, the ``notifications/tools/list_changed`` notification) refreshes the tool list, and a
fresh ``tools/list`` every ``health_interval_s`` notices a server that went away. A failed
connection or health check marks the server down (its tools leave the union at once) and the
session reconnects with exponential backoff. ``stop()`` ends the service: the session is closed
and the service exits (it is ``transient``: an exit is not restarted).

Guaranteed: ``tools`` is empty whenever ``up`` is false; every up/down change calls
``on_change`` and appends a ``service`` event (``mcp:<name>``, trigger ``up``/``down``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from routeiq.config.mcp import ENV_REF_PREFIX, McpServerSpec, McpSettings
from routeiq.errors import GatewayError, describe
from routeiq.lifecycle.clock import Clock, SystemClock
from routeiq.lifecycle.events import EventKind, EventLog
from routeiq.mcp.guard import HostGuard

if TYPE_CHECKING:
    from mcp import Client
    from mcp_types import CallToolResult, Tool

__all__ = ["ServerUnavailable", "UpstreamSession", "resolve_headers"]


class ServerUnavailable(GatewayError):
    """The registered server is not connected right now."""


class _ToolsChanged(Exception):
    """Internal: the session saw a list_changed notification and must refresh."""


def resolve_headers(headers: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Headers with ``os.environ/NAME`` values replaced from ``env`` (missing: refused)."""
    resolved = {}
    for name, value in headers.items():
        if value.startswith(ENV_REF_PREFIX):
            ref = value.removeprefix(ENV_REF_PREFIX)
            if ref not in env:
                raise ServerUnavailable(f"header {name!r} refers to unset variable {ref!r}")
            value = env[ref]
        resolved[name] = value
    return resolved


class UpstreamSession:
    def __init__(
        self,
        spec: McpServerSpec,
        *,
        settings: McpSettings,
        guard: HostGuard,
        env: Mapping[str, str],
        events: EventLog,
        on_change: Callable[[], None],
        clock: Clock | None = None,
    ) -> None:
        self.spec = spec
        self._settings = settings
        self._guard = guard
        self._env = env
        self._events = events
        self._on_change = on_change
        self._clock: Clock = clock or SystemClock()
        self._client: Client | None = None
        self._stop = anyio.Event()
        self._refresh = anyio.Event()
        self.tools: dict[str, Tool] = {}
        self.up = False
        self.last_error: str | None = None
        self._connected = False
        self._reported_down = False

    @property
    def name(self) -> str:
        return self.spec.name

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        attempt = 0
        async with anyio.create_task_group() as tg:

            async def watch_stop() -> None:
                await self._stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch_stop)
            try:
                while True:
                    self._connected = False
                    try:
                        await self._session()
                    except Exception as exc:  # any failure of the session: reconnect later
                        self._mark_down(describe(_leaf(exc)))
                    else:
                        self._mark_down("session ended")
                    attempt = 0 if self._connected else attempt + 1
                    delay = min(
                        self._settings.reconnect_max_s,
                        self._settings.reconnect_initial_s * (2 ** min(attempt, 16)),
                    )
                    await self._clock.sleep(delay)
            finally:
                self._mark_down(None)

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float) -> CallToolResult:
        """Forward one ``tools/call``; raises ``TimeoutError``, ``MCPError`` or
        ``ServerUnavailable``."""
        client = self._client
        if client is None or not self.up:
            raise ServerUnavailable(f"MCP server {self.name!r} is not connected")
        with anyio.fail_after(timeout_s):
            return await client.call_tool(tool, arguments, read_timeout_seconds=timeout_s)

    # --- the session ------------------------------------------------------------------------

    async def _session(self) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        from routeiq.mcp.pinning import PinnedTransport

        settings = self._settings
        addresses = await self._guard.check_resolved(self.spec.url)
        headers = resolve_headers(self.spec.headers, self._env)
        timeout = httpx2.Timeout(settings.connect_timeout_s, read=None)
        pinned = PinnedTransport(self.spec.url, addresses)
        async with httpx2.AsyncClient(headers=headers, timeout=timeout, transport=pinned) as http:
            transport = streamable_http_client(self.spec.url, http_client=http)
            client = Client(
                transport,
                cache=None,
                message_handler=self._on_message,
                read_timeout_seconds=settings.connect_timeout_s,
            )
            async with client:
                try:
                    await self._serve(client)
                finally:
                    self._client = None

    async def _serve(self, client: Client) -> None:
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS

        await self._list(client)
        self._client = client
        self._mark_up()
        async with anyio.create_task_group() as tg:
            if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                tg.start_soon(self._listen, client)
            tg.start_soon(self._refresh_on_request, client)
            while True:
                # The health check is a fresh tools/list (ping is gone as of 2026-07-28); it
                # also catches a changed list from a server that does not announce changes.
                await self._clock.sleep(self._settings.health_interval_s)
                if await self._list(client):
                    self._on_change()

    async def _listen(self, client: Client) -> None:
        async with client.listen(tools_list_changed=True) as subscription:
            async for _event in subscription:
                self._refresh.set()
        raise ServerUnavailable("the server closed its subscription stream")

    async def _refresh_on_request(self, client: Client) -> None:
        while True:
            await self._refresh.wait()
            self._refresh = anyio.Event()
            if await self._list(client):
                self._on_change()

    async def _on_message(self, message: Any) -> None:
        # Pre-2026 servers announce list changes as a plain notification.
        from mcp_types import ServerNotification, ToolListChangedNotification

        root = getattr(message, "root", message)
        if isinstance(message, (ToolListChangedNotification, ServerNotification)) and isinstance(
            root, ToolListChangedNotification
        ):
            self._refresh.set()

    async def _list(self, client: Client) -> bool:
        """Refresh ``tools``; True if they changed. Unchanged tools keep their identity."""
        tools: dict[str, Tool] = {}
        cursor: str | None = None
        for _page in range(100):
            with anyio.fail_after(self._settings.connect_timeout_s):
                page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            for tool in page.tools:
                if self.spec.exposes(tool.name):
                    old = self.tools.get(tool.name)
                    tools[tool.name] = old if old == tool else tool
            cursor = page.next_cursor
            if cursor is None:
                break
        changed = tools != self.tools
        self.tools = tools
        return changed

    def _mark_up(self) -> None:
        self.up, self.last_error = True, None
        self._connected, self._reported_down = True, False
        self._events.append(
            EventKind.SERVICE,
            trigger="up",
            component=f"mcp:{self.name}",
            attributes={"tools": len(self.tools)},
        )
        self._on_change()

    def _mark_down(self, error: str | None) -> None:
        was_up = self.up
        self.up, self.tools, self._client = False, {}, None
        self.last_error = error
        if was_up or (error is not None and not self._reported_down):
            # One "down" event per outage, not one per reconnect attempt.
            self._reported_down = True
            self._events.append(
                EventKind.SERVICE,
                trigger="down",
                component=f"mcp:{self.name}",
                ok=error is None,
                error=error,
            )
            self._on_change()


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, for a readable message."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
