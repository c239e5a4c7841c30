"""Fixtures for the MCP gateway tests: gateways served by hypercorn on loopback, in-process.

``serve_gateway`` starts a ``GatewayApp`` under a real hypercorn server in this test's event
loop (so the ``mcp`` client talks real streamable HTTP to ``/mcp``) and shuts it down cleanly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from routeiq.app import GatewayApp, create_app
from routeiq.assembly.gateway import Gateway
from tests.mcp.servers import _wait_listening
from tests.support.asgi import close_litellm_clients
from tests.support.procs import free_port, start_gateway

__all__ = ["ServeFactory", "mcp_client", "serve_gateway", "start_gateway", "wait_tools"]

MASTER = "sk-mcp-master-0001"
ADMIN = "sk-mcp-admin-0001"


@dataclass
class ServedGateway:
    app: GatewayApp
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    @property
    def gateway(self) -> Gateway:
        gateway = self.app.gateway
        assert gateway is not None
        return gateway

    @property
    def mcp(self) -> Any:
        return self.gateway.components.mcp

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        )


def gateway_config(path: Path, mcp: dict[str, Any], **routeiq: Any) -> Path:
    data = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
        "routeiq": {
            "master_key": MASTER,
            "admin_key": ADMIN,
            "drain": {"delay_s": 0, "timeout_s": 5},
            "mcp": {"allow_hosts": ["127.0.0.1"], "poll_s": 0.1, **mcp},
            **routeiq,
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


@asynccontextmanager
async def served(
    config_path: Path, env: dict[str, str] | None = None
) -> AsyncIterator[ServedGateway]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    app = create_app(env=env or {}, config_path=config_path, exit_on_startup_failure=False)
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.graceful_timeout = 1.0
    config.accesslog = None
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        try:
            with anyio.fail_after(90):
                while app.gateway is None or app.gateway.state != "serving":
                    if app.startup_error is not None:
                        raise AssertionError(f"startup failed: {app.startup_error}")
                    await anyio.sleep(0.02)
            await _wait_listening(port)
            yield ServedGateway(app, port)
        finally:
            stop.set()
    await close_litellm_clients()


ServeFactory = Callable[..., AbstractAsyncContextManager[ServedGateway]]


@pytest.fixture
def serve_gateway(tmp_path: Path) -> ServeFactory:
    def make(
        mcp: dict[str, Any], name: str = "gw", env: dict[str, str] | None = None, **routeiq: Any
    ) -> AbstractAsyncContextManager[ServedGateway]:
        path = gateway_config(tmp_path / f"{name}.yaml", mcp, **routeiq)
        return served(path, env)

    return make


@asynccontextmanager
async def mcp_client(
    url: str, key: str = MASTER, *, mode: str = "auto", fresh_connections: bool = False
) -> AsyncIterator[Any]:
    """The SDK's client for ``/mcp``, with the gateway key on its HTTP client; ``mode="legacy"``
    speaks the pre-2026 ``initialize`` protocol, ``fresh_connections`` opens a connection per
    request (as a load balancer spreading requests would)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {key}"}
    keepalive = 0 if fresh_connections else 20
    limits = httpx2.Limits(max_connections=100, max_keepalive_connections=keepalive)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30, limits=limits) as http,
        Client(streamable_http_client(url, http_client=http), cache=None, mode=mode) as client,
    ):
        yield client


async def wait_tools(client: Any, predicate: Callable[[list[str]], bool]) -> list[str]:
    """Poll ``tools/list`` until ``predicate`` holds (bounded: 20 s)."""
    with anyio.fail_after(20):
        while True:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            if predicate(names):
                return names
            await anyio.sleep(0.05)
