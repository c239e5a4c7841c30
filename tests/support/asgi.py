"""Drive a RouteIQ ``GatewayApp`` in-process: its ASGI lifespan, and HTTP via httpx."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from routeiq.app import GatewayApp


class LifespanDriver:
    """Sends lifespan messages to an app the way a server does, and records its replies."""

    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        self.replies: list[dict[str, Any]] = []
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[dict[str, Any]](4)
        self._reply_send, self._reply_recv = anyio.create_memory_object_stream[dict[str, Any]](4)

    async def run(self) -> None:
        async def receive() -> dict[str, Any]:
            return await self._app_inbox.receive()

        async def send(message: dict[str, Any]) -> None:
            self.replies.append(message)
            await self._reply_send.send(message)

        await self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    def close(self) -> None:
        for stream in (self._to_app, self._app_inbox, self._reply_send, self._reply_recv):
            stream.close()

    async def startup(self) -> dict[str, Any]:
        await self._to_app.send({"type": "lifespan.startup"})
        return await self._reply_recv.receive()

    async def shutdown(self) -> dict[str, Any]:
        await self._to_app.send({"type": "lifespan.shutdown"})
        return await self._reply_recv.receive()


@asynccontextmanager
async def running_app(app: GatewayApp) -> AsyncIterator[httpx.AsyncClient]:
    """Start ``app``'s lifespan (failing the test if startup fails), yield a client, shut down."""
    driver = LifespanDriver(app)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.run)
            reply = await driver.startup()
            if reply["type"] != "lifespan.startup.complete":
                raise AssertionError(f"startup failed: {reply}")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield client
            reply = await driver.shutdown()
            assert reply["type"] == "lifespan.shutdown.complete", reply
            await close_litellm_clients()
    finally:
        driver.close()


async def close_litellm_clients() -> None:
    """litellm caches HTTP clients process-wide, per event loop, and never closes them; each
    test has its own loop, so close them before the loop ends (a server process just exits)."""
    litellm = sys.modules.get("litellm")
    if litellm is not None:
        await litellm.close_litellm_async_clients()
