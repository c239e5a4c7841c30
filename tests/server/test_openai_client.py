"""The official openai client against a real hypercorn process and a real upstream process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support.procs import REPO, gateway_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

KEY = "sk-gateway-key-42"


@pytest.fixture
def upstream_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream", "--port", "0", "--chunk-delay", "0.05"],
        cwd=REPO,
        env=gateway_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def upstream_stats(url: str) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(
        url.removesuffix("/v1") + "/_upstream/stats", timeout=5
    ).json()
    return stats


@pytest.fixture(params=[True, False], ids=["fast-path", "litellm-path"])
def gateway_url(
    request: pytest.FixtureRequest, tmp_path: Path, upstream_url: str, start_gateway: Any
) -> str:
    def deployment(name: str, upstream_model: str) -> dict[str, Any]:
        params = {"model": f"openai/{upstream_model}", "api_base": upstream_url, "api_key": "sk-up"}
        return {"model_name": name, "litellm_params": params}

    config = tmp_path / "config.yaml"
    models = [deployment("gpt", "gpt"), deployment("hang", "hang")]
    routeiq = {"master_key": KEY, "passthrough": request.param}
    config.write_text(yaml.safe_dump({"model_list": models, "routeiq": routeiq}))
    gateway = start_gateway("hypercorn", env={"ROUTEIQ_CONFIG": str(config)})
    gateway.wait_ready()
    return f"{gateway.url}/v1"


def test_openai_client_end_to_end(gateway_url: str) -> None:
    client = openai.OpenAI(base_url=gateway_url, api_key=KEY, max_retries=0)
    chat = client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "[upstream] hi"
    stream = client.chat.completions.create(
        model="gpt",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "[upstream] stream me"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completion = client.completions.create(model="gpt", prompt="say hi")
    assert completion.choices[0].text
    embedding = client.embeddings.create(model="gpt", input="hello")
    assert len(embedding.data[0].embedding) > 0
    assert [m.id for m in client.models.list()] == ["gpt", "hang"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway_url, api_key="wrong", max_retries=0).models.list()


def test_client_disconnect_mid_stream_cancels_the_upstream_request(
    gateway_url: str, upstream_url: str
) -> None:
    client = openai.OpenAI(base_url=gateway_url, api_key=KEY, max_retries=0)
    before = upstream_stats(upstream_url)
    stream = client.chat.completions.create(
        model="hang", messages=[{"role": "user", "content": "x"}], stream=True
    )
    first = next(iter(stream))
    assert first.choices[0].delta.content
    stream.close()  # the client goes away while the upstream is still generating
    deadline = time.monotonic() + 10
    while upstream_stats(upstream_url)["streams_aborted"] <= before["streams_aborted"]:
        assert time.monotonic() < deadline, "the upstream stream was never cancelled"
        time.sleep(0.05)
    stats = upstream_stats(upstream_url)
    assert stats["in_flight"] == 0
