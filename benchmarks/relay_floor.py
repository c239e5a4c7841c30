"""The floor of any gateway served by hypercorn that relays with aiohttp: a bare ASGI relay.

It does only what no gateway of this shape can skip: hypercorn parses the request and writes the
response, and one pooled aiohttp session POSTs the body to ``RELAY_UPSTREAM`` and relays the
status and bytes (streamed as they come). No auth, no validation, no routing, no metrics.
``benchmarks/overhead.py`` serves it beside RouteIQ, so that RouteIQ's own cost per request is
its CPU time minus this one's, measured in the same run.

    RELAY_UPSTREAM=http://127.0.0.1:PORT/v1 hypercorn benchmarks.relay_floor:app
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

_session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            else:
                if _session is not None:
                    await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert _session is not None
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    url = os.environ["RELAY_UPSTREAM"].rstrip("/") + scope["path"].removeprefix("/v1")
    headers = {"content-type": "application/json", "authorization": "Bearer relay"}
    async with _session.post(url, data=body, headers=headers) as response:
        content_type = response.headers.get("content-type", "application/json").encode()
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", content_type)],
            }
        )
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
