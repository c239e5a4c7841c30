"""Real MCP servers for tests, built with the ``mcp`` SDK, served by hypercorn on loopback.

Each ``McpTestServer`` is its own process on a fixed port that survives ``stop()`` (SIGKILL)
and ``start()``, so a test can kill a server and bring the same one back. Nothing is started
at import.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tests.support.procs import REPO, free_port

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
    """One MCP server in its own process (``python -m tests.mcp.servers NAME PORT HOST``),
    listening on ``host`` (a loopback address)."""

    name: str
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"

    async def start(self) -> None:
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; we then poll the port
            [sys.executable, "-m", "tests.mcp.servers", self.name, str(self.port), self.host],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await _wait_listening(self.port, self._proc, self.host)

    async def stop(self) -> None:
        """Kill the server (SIGKILL): its connections drop, its port refuses."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            await anyio.to_thread.run_sync(proc.wait)


async def _wait_listening(
    port: int, proc: subprocess.Popen[bytes] | None = None, host: str = "127.0.0.1"
) -> None:
    with anyio.fail_after(60):
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {proc.returncode}")
            try:
                stream = await anyio.connect_tcp(host, port)
            except OSError:
                await anyio.sleep(0.02)
                continue
            await stream.aclose()
            return


@asynccontextmanager
async def mcp_servers(*names: str) -> AsyncIterator[dict[str, McpTestServer]]:
    servers = {n: McpTestServer(n) for n in names}
    try:
        async with anyio.create_task_group() as tg:
            for server in servers.values():
                tg.start_soon(server.start)
        yield servers
    finally:
        for server in servers.values():
            await server.stop()


def tool_text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def main(argv: list[str] | None = None) -> None:
    import asyncio

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    name, port, host = (argv or sys.argv[1:])[:3]
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    app = build_server(name).streamable_http_app()
    asyncio.run(serve(app, config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
