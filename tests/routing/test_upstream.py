"""The test upstream speaks OpenAI's wire format to the official client, injects the faults it
advertises, says who answered, and counts streams a client abandoned."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.support.upstream import Directives, running_upstream

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


def test_directives_come_from_model_name_and_headers():
    assert Directives.parse("gpt", {}) == Directives()
    assert Directives.parse("slow-250ms+fail-503", {}) == Directives(delay=0.25, fail_status=503)
    assert Directives.parse("gpt", {"x-upstream-fault": "drop", "x-upstream-delay": "2"}) == (
        Directives(delay=2.0, drop=True)
    )
    assert Directives.parse("slow-2s+hang", {}) == Directives(delay=2.0, hang=True)


async def test_chat_completion_names_the_server_that_answered():
    async with (
        running_upstream(name="east") as up,
        AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client,
    ):
        reply = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert reply.choices[0].message.content == "[east] hello there"
    assert reply.system_fingerprint == up.identity == f"east:{up.port}"
    assert reply.model == "gpt-test"
    assert reply.usage is not None
    assert reply.usage.total_tokens > 0
    (recorded,) = up.requests
    assert (recorded.path, recorded.model, recorded.stream) == (
        "/v1/chat/completions",
        "gpt-test",
        False,
    )
    assert recorded.headers["authorization"] == "Bearer k"


async def test_streaming_chat_sends_chunks_then_usage_then_done():
    async with (
        running_upstream(name="s", stream_chunks=3) as up,
        AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client,
    ):
        stream = await client.chat.completions.create(
            model="gpt", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[s] hello there"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert all(c.system_fingerprint == up.identity for c in chunks)
    stats = up.statistics()
    assert (stats.streams_started, stats.streams_completed, stats.streams_aborted) == (1, 1, 0)


async def test_completions_embeddings_and_models():
    async with (
        running_upstream(name="u", embedding_dims=4, models=("a", "b")) as up,
        AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client,
    ):
        completion = await client.completions.create(model="gpt", prompt="say hi")
        stream = await client.completions.create(model="gpt", prompt="say hi", stream=True)
        streamed = "".join([c.choices[0].text async for c in stream if c.choices])
        as_base64 = await client.embeddings.create(model="emb", input=["a", "b"])
        as_floats = await client.embeddings.create(model="emb", input="a", encoding_format="float")
        models = [m.id async for m in client.models.list()]
    assert completion.choices[0].text == streamed == "[u] say hi"
    assert len(as_base64.data) == 2
    assert len(as_base64.data[0].embedding) == 4
    assert as_floats.data[0].embedding == pytest.approx(as_base64.data[0].embedding, abs=1e-6)
    assert models == ["a", "b"]


async def test_faults_by_model_name_and_header():
    async with (
        running_upstream() as up,
        AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client,
    ):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="fail-500", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="fail-429", messages=MESSAGES)
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="drop", messages=MESSAGES)
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(
                model="gpt", messages=MESSAGES, extra_headers={"x-upstream-fault": "drop"}
            )
        start = time.monotonic()
        await client.chat.completions.create(model="slow-100ms", messages=MESSAGES)
        assert time.monotonic() - start >= 0.1
    assert limited.value.response.headers["retry-after"] == "0"
    stats = up.statistics()
    assert (stats.failures_injected, stats.connections_dropped, stats.requests) == (2, 2, 5)


async def test_api_key_is_enforced_when_set():
    async with (
        running_upstream(api_key="secret") as up,
        AsyncOpenAI(base_url=up.base_url, api_key="wrong", max_retries=0) as client,
    ):
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


async def test_a_client_closing_a_stream_is_counted_as_aborted():
    async with (
        running_upstream() as up,
        AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client,
    ):
        stream = await client.chat.completions.create(model="hang", messages=MESSAGES, stream=True)
        async for _ in stream:
            break
        assert up.statistics().streams_aborted == 0
        await stream.close()
        with anyio.fail_after(10):
            stats = await up.wait_streams_aborted(1)
    assert (stats.streams_started, stats.streams_completed) == (1, 0)


async def test_a_dropped_stream_fails_the_client_and_is_not_an_abort():
    async with (
        running_upstream() as up,
        AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client,
    ):
        stream = await client.chat.completions.create(model="drop", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    assert up.statistics().connections_dropped == 1
    assert up.statistics().streams_aborted == 0


async def test_delay_can_change_while_running():
    async with running_upstream() as up:
        up.delay = 0.05
        async with AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
            start = time.monotonic()
            await client.models.list()
    assert time.monotonic() - start >= 0.05


def test_runs_as_a_process_and_prints_its_url():
    command = [sys.executable, "-m", "tests.support.upstream", "--port", "0", "--name", "proc"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            assert base_url.endswith("/v1")
            with urllib.request.urlopen(f"{base_url}/models", timeout=10) as response:
                assert response.headers["x-upstream"] == "proc"
            stats_url = base_url.removesuffix("/v1") + "/_upstream/stats"
            with urllib.request.urlopen(stats_url, timeout=10) as response:
                assert json.load(response)["requests"] == 1
        finally:
            proc.terminate()
            returncode = proc.wait(timeout=10)
    assert returncode == 0
