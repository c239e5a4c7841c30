"""Real MCP servers for tests, built with the ``mcp`` SDK and served by hypercorn on loopback.

``McpTestServer`` serves on a fixed port that survives ``stop()``/``start()``, so a test can
take a server away (its listener is gone: connection refused) and bring the same one back.
Nothing is started at import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tests.support.procs import free_port

__all__ = ["McpTestServer", "build_server", "mcp_servers"]


def build_server(name: str) -> MCPServer:
    """Tools: ``echo``, ``add``, ``fail`` (a tool error), ``slow`` and ``grow`` (adds a tool)."""
    server: MCPServer = MCPServer(name)

    @server.tool()
    def echo(text: str) -> str:
        """Return the text, prefixed with the server's name."""
        return f"{name}:{text}"

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def fail(reason: str) -> str:
        """Always fails with the given reason."""
        raise ToolError(f"failed on purpose: {reason}")

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, then answer."""
        await anyio.sleep(seconds)
        return "done"

    @server.tool()
    async def grow(tool: str, ctx: Context) -> str:
        """Register a new tool named ``tool`` and announce that the tool list changed."""

        def extra() -> str:
            return f"{name}:{tool}"

        server.add_tool(extra, name=tool, description="added at run time")
        await ctx.notify_tools_changed()
        return "grown"

    return server


@dataclass
class McpTestServer:
    name: str
    tg: TaskGroup
    port: int = field(default_factory=free_port)
    server: MCPServer | None = None
    _stop: anyio.Event | None = None
    _done: anyio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        self.server = build_server(self.name)
        app = self.server.streamable_http_app()
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.graceful_timeout = 0.1
        config.accesslog = None
        config.errorlog = None
        stop = anyio.Event()
        done = anyio.Event()
        self._stop, self._done = stop, done

        async def run() -> None:
            try:
                await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
            finally:
                done.set()

        self.tg.start_soon(run)
        await _wait_listening(self.port)

    async def stop(self) -> None:
        """Take the server away: its listener closes, open streams are cut after 0.1 s."""
        if self._stop is not None and self._done is not None:
            self._stop.set()
            with anyio.fail_after(10):
                await self._done.wait()
        self._stop = self._done = None


async def _wait_listening(port: int) -> None:
    with anyio.fail_after(10):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.02)
                continue
            await stream.aclose()
            return


@asynccontextmanager
async def mcp_servers(*names: str) -> AsyncIterator[dict[str, McpTestServer]]:
    async with anyio.create_task_group() as tg:
        servers = {n: McpTestServer(n, tg) for n in names}
        for server in servers.values():
            await server.start()
        try:
            yield servers
        finally:
            for server in servers.values():
                await server.stop()


def tool_text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)
