"""The official openai client against real ``routeiq serve`` processes and a real upstream process.

One gateway process per configuration (module-scoped): the embedded default (``routeiq-mock``,
no master key), a fast-path model and a litellm-path model on the real loopback upstream.
"""

from __future__ import annotations

import base64
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support.procs import BIN, REPO, GatewayProcess, free_port, gateway_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEY = "sk-gateway-key-42"
UPSTREAM_DIMS = 8  # tests.support.upstream's embedding size
MOCK_DIMS = 1536  # the gateway's own vectors for a mocked model
FAIL_STATUSES = [400, 401, 404, 429, 500, 503]


@pytest.fixture(scope="module")
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


Serve = Callable[[dict[str, str]], GatewayProcess]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """Factory of module-lived ``routeiq serve`` processes, stopped at the module's end."""
    started: list[GatewayProcess] = []
    tmp = tmp_path_factory.mktemp("gateways")

    def start(env: dict[str, str]) -> GatewayProcess:
        port = free_port()
        gateway = GatewayProcess(
            [str(BIN / "routeiq"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            port,
            gateway_env(env),
            tmp / f"gateway-{port}.log",
        )
        started.append(gateway.start())
        gateway.wait_ready(timeout=120)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def _config(tmp: Path, upstream_url: str, *, passthrough: bool) -> Path:
    def deployment(name: str) -> dict[str, Any]:
        params = {"model": f"openai/{name}", "api_base": upstream_url, "api_key": "sk-up"}
        return {"model_name": name, "litellm_params": params}

    names = ["gpt", "hang", *(f"fail-{status}" for status in FAIL_STATUSES)]
    config = tmp / f"config-{passthrough}.yaml"
    routeiq = {"master_key": KEY, "passthrough": passthrough}
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [deployment(name) for name in names],
                "router_settings": {"num_retries": 0},
                "routeiq": routeiq,
            }
        )
    )
    return config


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "litellm-path"])
def gateway_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream_url: str,
    serve: Serve,
) -> str:
    config = _config(tmp_path_factory.mktemp("config"), upstream_url, passthrough=request.param)
    return f"{serve({'ROUTEIQ_CONFIG': str(config)}).url}/v1"


@pytest.fixture(scope="module")
def default_url(serve: Serve) -> str:
    """The embedded default: no config file, ``routeiq-mock``, no master key."""
    return f"{serve({}).url}/v1"


def _decoded(vector: object) -> list[float]:
    if isinstance(vector, str):  # the client leaves base64 as is for a non-float response
        raw = base64.b64decode(vector)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert isinstance(vector, list)
    return [float(v) for v in vector]


def check_parity(client: openai.OpenAI, model: str, *, reply: str | None, dims: int) -> None:
    """Every route through the official client: chat, stream with usage, completions,
    embeddings (float and base64), models.list and models.retrieve."""
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == (reply or "[upstream] hi")
    assert chat.usage is not None and chat.usage.total_tokens > 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (reply or "[upstream] stream me")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completion = client.completions.create(model=model, prompt="say hi")
    assert completion.choices[0].text
    floats = client.embeddings.create(model=model, input=["hello", "world"])
    assert [len(d.embedding) for d in floats.data] == [dims, dims]
    assert floats.data[0].embedding != floats.data[1].embedding
    # The client asks for base64 by default and decodes it itself (numpy-free path: floats).
    encoded = client.embeddings.create(model=model, input="hello", encoding_format="base64")
    vector = _decoded(encoded.data[0].embedding)
    assert len(vector) == dims
    assert vector == pytest.approx(floats.data[0].embedding, abs=1e-6)
    implicit = client.embeddings.create(model=model, input="hello")
    assert implicit.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert model in [m.id for m in client.models.list()]
    card = client.models.retrieve(model)
    assert (card.id, card.object) == (model, "model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])


def test_openai_client_on_the_embedded_default(default_url: str) -> None:
    client = openai.OpenAI(base_url=default_url, api_key="anything", max_retries=0)
    reply = "Hello from RouteIQ's embedded default model."
    check_parity(client, "routeiq-mock", reply=reply, dims=MOCK_DIMS)
    assert [m.id for m in client.models.list()] == ["routeiq-mock"]


def test_openai_client_end_to_end(gateway_url: str) -> None:
    client = openai.OpenAI(base_url=gateway_url, api_key=KEY, max_retries=0)
    check_parity(client, "gpt", reply=None, dims=UPSTREAM_DIMS)
    assert [m.id for m in client.models.list()][:2] == ["gpt", "hang"]
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
    assert upstream_stats(upstream_url)["in_flight"] == 0


@pytest.mark.parametrize("status", FAIL_STATUSES)
def test_upstream_errors_never_name_litellm(gateway_url: str, status: int) -> None:
    """An upstream failure, through either path and on every route, streamed or not: a clean
    OpenAI error body without litellm's class names."""
    model = f"fail-{status}"
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=30) as http:
        requests: list[tuple[str, dict[str, Any]]] = [
            ("/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
            ("/completions", {"prompt": "x"}),
            ("/embeddings", {"input": "x"}),
            ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True}),
        ]
        for route, body in requests:
            response = http.post(f"{gateway_url}{route}", json={"model": model, **body})
            assert "litellm" not in response.text.lower(), response.text
            assert "exception" not in response.text.lower(), response.text
            assert "error code:" not in response.text.lower(), response.text
            if response.status_code != 200:  # a stream's error may come in-band
                error = response.json()["error"]
                assert error["message"] and set(error) == {"message", "type", "param", "code"}
    client = openai.OpenAI(base_url=gateway_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert "litellm" not in str(raised.value).lower()
