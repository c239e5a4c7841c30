"""A stream the caller abandons through a Router is abandoned upstream too: closing litellm's
stream, or cancelling the task reading it, closes the upstream connection."""

from __future__ import annotations

import anyio
import pytest

from routeiq.routing.registry import default_registry
from tests.support.upstream import running_upstream

from .helpers import MESSAGES, deployment

pytestmark = pytest.mark.anyio


async def test_closing_the_routers_stream_aborts_the_upstream_stream(make_router):
    async with running_upstream() as up:
        router = make_router([deployment("chat", "a", up, model="hang")])
        default_registry().install(router, "cost-aware")
        stream = await router.acompletion(model="chat", messages=MESSAGES, stream=True)
        async for _ in stream:
            break
        await stream.aclose()
        with anyio.fail_after(10):
            stats = await up.wait_streams_aborted(1)
    assert (stats.streams_started, stats.streams_completed) == (1, 0)


async def test_cancelling_the_reader_aborts_the_upstream_stream(make_router):
    async with running_upstream() as up:
        router = make_router([deployment("chat", "a", up, model="hang")])
        default_registry().install(router, "cost-aware")
        first_chunk = anyio.Event()

        async def read() -> None:
            stream = await router.acompletion(model="chat", messages=MESSAGES, stream=True)
            async for _ in stream:
                first_chunk.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await first_chunk.wait()
                tg.cancel_scope.cancel()
            stats = await up.wait_streams_aborted(1)
    assert stats.streams_completed == 0
