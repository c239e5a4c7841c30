"""Server-sent event streams: framing, usage counting, and cancelling on client disconnect.

The guarantee: when the client goes away mid-stream, the body iterator is closed at once, and
closing it closes the upstream stream (litellm's or the fast path's HTTP response), so no
upstream generation keeps running for nobody.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
from starlette.responses import StreamingResponse

from routeiq.proxy.errors import map_upstream_error
from routeiq.proxy.limits import DisconnectWatch
from routeiq.proxy.passthrough import stream_usage

__all__ = ["DisconnectAwareStream", "aclose_quietly", "count_stream_usage", "litellm_sse"]

UsageSink = Callable[[Any], None]


class DisconnectAwareStream(StreamingResponse):
    """Streams until done or until the client disconnects, then closes the body iterator.

    Starlette stops listening for ``http.disconnect`` on newer ASGI servers and relies on
    ``send`` failing, which hypercorn does not do: a gone client would keep the upstream
    generating.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        iterator = self.body_iterator
        watcher: DisconnectWatch | None = None
        try:
            with anyio.CancelScope() as streaming:
                watcher = DisconnectWatch(receive, streaming.cancel)
                await self.stream_response(send)
        finally:
            if watcher is not None:
                watcher.cancel()
            await aclose_quietly(iterator)


async def aclose_quietly(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


async def count_stream_usage(
    chunks: AsyncIterator[bytes], on_usage: UsageSink
) -> AsyncIterator[bytes]:
    """Relays SSE bytes unchanged, reporting the usage chunk (lines may span chunks)."""
    pending = b""
    try:
        async for chunk in chunks:
            yield chunk
            pending += chunk
            cut = pending.rfind(b"\n")
            if cut >= 0:
                usage = stream_usage(pending[:cut])
                if usage is not None:
                    on_usage(usage)
                pending = pending[cut + 1 :]
    finally:
        await aclose_quietly(chunks)


async def litellm_sse(
    stream: Any, redact: Callable[[str], str], on_usage: UsageSink
) -> AsyncIterator[bytes]:
    """OpenAI's SSE framing of a litellm stream; closing this closes the upstream stream."""
    try:
        async for chunk in stream:
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                on_usage(usage)
            yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"
    except Exception as exc:  # headers are sent: report in-band, as OpenAI does
        error = map_upstream_error(exc, redact)
        body: Mapping[str, Any] = {
            "error": {
                "message": error.message,
                "type": "upstream_error",
                "param": None,
                "code": error.code,
            }
        }
        yield b"data: " + json.dumps(body).encode() + b"\n\n"
    finally:
        await aclose_quietly(stream)
    yield b"data: [DONE]\n\n"
