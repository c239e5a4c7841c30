"""The OpenAI-compatible API in-process, against a real upstream server on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from routeiq.app import GatewayApp
from tests.support.asgi import running_app
from tests.support.upstream import Upstream, running_upstream

pytestmark = pytest.mark.anyio

KEY = "sk-master-key-123456"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def deployment(name: str, upstream: Upstream, upstream_model: str | None = None) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{upstream_model or name}",
            "api_base": upstream.base_url,
            "api_key": "sk-upstream-secret-987",
        },
    }


def write(tmp_path: Path, models: list[dict[str, Any]], **sections: Any) -> Path:
    routeiq = {"master_key": KEY, **sections.pop("routeiq", {})}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": models, "routeiq": routeiq, **sections}))
    return path


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with running_upstream() as up:
        yield up


@pytest.fixture(params=[True, False], ids=["fast-path", "litellm-path"])
def passthrough(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_chat_completions_embeddings_models(
    tmp_path: Path, upstream: Upstream, passthrough: bool
) -> None:
    models = [deployment("gpt", upstream)]
    app = GatewayApp(
        env={}, config_path=write(tmp_path, models, routeiq={"passthrough": passthrough})
    )
    async with running_app(app) as client:
        chat = await client.post(
            "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=AUTH
        )
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "[upstream] hello"
        assert body["system_fingerprint"] == upstream.identity
        assert body["usage"]["total_tokens"] > 0
        assert chat.headers["x-routeiq-deployment"]
        completion = await client.post(
            "/v1/completions", json={"model": "gpt", "prompt": "say hi"}, headers=AUTH
        )
        assert completion.status_code == 200, completion.text
        assert completion.json()["object"] == "text_completion"
        embedding = await client.post(
            "/v1/embeddings", json={"model": "gpt", "input": ["a", "b"]}, headers=AUTH
        )
        assert embedding.status_code == 200, embedding.text
        assert [d["index"] for d in embedding.json()["data"]] == [0, 1]
        listed = await client.get("/v1/models", headers=AUTH)
        assert [m["id"] for m in listed.json()["data"]] == ["gpt"]
        gateway = app.gateway
        assert gateway is not None and gateway.metrics is not None
        registry = gateway.metrics.registry
        labels = {"route": "/v1/chat/completions", "model": "gpt", "status_class": "2xx"}
        assert registry.get_sample_value("gateway_requests_total", labels) == 1
        assert (registry.get_sample_value("gateway_tokens_total", {"type": "input"}) or 0) > 0
        assert registry.get_sample_value("gateway_inflight_requests") == 0
        decisions = {"strategy": "simple-shuffle", "arm": "none"}
        assert registry.get_sample_value("gateway_routing_decisions_total", decisions) == 3
    assert upstream.statistics().requests == 3


async def test_streaming_with_usage(tmp_path: Path, upstream: Upstream, passthrough: bool) -> None:
    app = GatewayApp(
        env={},
        config_path=write(
            tmp_path, [deployment("gpt", upstream)], routeiq={"passthrough": passthrough}
        ),
    )
    async with running_app(app) as client:
        request = {
            "model": "gpt",
            "stream": True,
            "stream_options": {"include_usage": True},
            **CHAT,
        }
        async with client.stream(
            "POST", "/v1/chat/completions", json=request, headers=AUTH
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert all("choices" in c for c in chunks), lines
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert text == "[upstream] hello"
        assert chunks[-1]["usage"]["completion_tokens"] > 0
        gateway = app.gateway
        assert gateway is not None and gateway.metrics is not None
        registry = gateway.metrics.registry
        assert (
            registry.get_sample_value("gateway_tokens_total", {"type": "output"})
            == chunks[-1]["usage"]["completion_tokens"]
        )
        assert registry.get_sample_value("gateway_time_to_first_token_seconds_count") == 1


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"messages": CHAT["messages"]}).encode(), 400, "model"),
        (json.dumps({"model": "gpt"}).encode(), 400, "messages"),
        (json.dumps({"model": "gpt", "messages": "hi"}).encode(), 400, "messages"),
        (
            json.dumps({"model": "gpt", "messages": [{"content": "x"}]}).encode(),
            400,
            "messages[0].role",
        ),
        (json.dumps({"model": "gpt", "stream": "yes", **CHAT}).encode(), 400, "stream"),
        (json.dumps({"model": "gpt", "api_base": "http://evil", **CHAT}).encode(), 400, "api_base"),
        (json.dumps({"model": "nope", **CHAT}).encode(), 404, "model"),
    ],
)
async def test_bad_requests_get_openai_errors(
    tmp_path: Path, upstream: Upstream, body: bytes, status: int, param: str | None
) -> None:
    app = GatewayApp(env={}, config_path=write(tmp_path, [deployment("gpt", upstream)]))
    async with running_app(app) as client:
        response = await client.post("/v1/chat/completions", content=body, headers=AUTH)
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        gateway = app.gateway
        assert gateway is not None and gateway.metrics is not None
        # Known model names are labels; anything else counts as "other" (bounded labels).
        model = "gpt" if b'"model": "gpt"' in body else "other"
        labels = {"route": "/v1/chat/completions", "model": model, "status_class": "4xx"}
        assert gateway.metrics.registry.get_sample_value("gateway_requests_total", labels) == 1
    assert upstream.statistics().requests == 0


async def test_auth_and_body_limit(tmp_path: Path, upstream: Upstream) -> None:
    config = write(
        tmp_path, [deployment("gpt", upstream)], routeiq={"limits": {"max_body_bytes": 200}}
    )
    app = GatewayApp(env={}, config_path=config)
    async with running_app(app) as client:
        missing = await client.post("/v1/chat/completions", json={"model": "gpt", **CHAT})
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "invalid_api_key"
        wrong = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt", **CHAT},
            headers={"authorization": "Bearer sk-wrong"},
        )
        assert wrong.status_code == 401
        big = {"model": "gpt", "messages": [{"role": "user", "content": "x" * 500}]}
        too_large = await client.post("/v1/chat/completions", json=big, headers=AUTH)
        assert too_large.status_code == 413
        assert too_large.json()["error"]["code"] == "request_too_large"
        assert (await client.get("/v1/models")).status_code == 401
        metrics = (await client.get("/metrics")).text
        gateway = app.gateway
        assert gateway is not None
        everything = json.dumps([e.to_dict() for e in gateway.events.events]) + metrics
        assert KEY not in everything and "sk-upstream-secret-987" not in everything
        assert "sk-wrong" not in everything
    assert upstream.statistics().requests == 0


@pytest.mark.parametrize(
    ("upstream_model", "status", "code"),
    [
        ("fail-429", 429, "rate_limit_exceeded"),
        ("fail-500", 502, "upstream_error"),
        ("slow-3s", 504, "upstream_timeout"),
    ],
)
async def test_upstream_failures_map_to_gateway_statuses(
    tmp_path: Path, upstream: Upstream, upstream_model: str, status: int, code: str
) -> None:
    models = [deployment("gpt", upstream, upstream_model)]
    config = write(tmp_path, models, router_settings={"num_retries": 0, "timeout": 0.5})
    app = GatewayApp(env={}, config_path=config)
    async with running_app(app) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=AUTH
        )
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code
        assert (
            "Traceback" not in error["message"] and "sk-upstream-secret-987" not in error["message"]
        )


async def test_litellm_fallbacks_from_router_settings_rescue_a_failing_deployment(
    tmp_path: Path, upstream: Upstream
) -> None:
    models = [deployment("primary", upstream, "fail-500"), deployment("backup", upstream, "backup")]
    config = write(
        tmp_path, models, router_settings={"num_retries": 1, "fallbacks": [{"primary": ["backup"]}]}
    )
    app = GatewayApp(env={}, config_path=config)
    async with running_app(app) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "primary", **CHAT}, headers=AUTH
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "[upstream] hello"
    seen = [r.model for r in upstream.requests]
    assert "fail-500" in seen
    assert seen[-1] == "backup"
    assert upstream.statistics().failures_injected >= 1


async def test_request_spans_follow_genai_conventions(tmp_path: Path, upstream: Upstream) -> None:
    app = GatewayApp(env={}, config_path=write(tmp_path, [deployment("gpt", upstream)]))
    exporter = InMemorySpanExporter()
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None
        gateway.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        ok = await client.post("/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=AUTH)
        assert ok.status_code == 200
        missing = await client.post(
            "/v1/chat/completions", json={"model": "nope", **CHAT}, headers=AUTH
        )
        assert missing.status_code == 404
    spans = {span.name: span for span in exporter.get_finished_spans()}
    span = spans["chat gpt"]
    attributes: dict[str, Any] = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert isinstance(attributes["gen_ai.usage.input_tokens"], int)
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["routeiq.routing.deployment"] == ok.headers["x-routeiq-deployment"]
    failed = spans["chat nope"]
    assert failed.status.status_code.name == "ERROR"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(
        st.sampled_from(
            ["model", "messages", "stream", "user", "prompt", "input", "n", "metadata", "x"]
        ),
        json_values,
        max_size=6,
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=bodies,
    route=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]),
)
def test_garbage_never_gets_a_5xx(tmp_path: Path, body: bytes, route: str) -> None:
    import anyio

    async def run() -> httpx.Response:
        config = tmp_path / "fuzz.yaml"
        if not config.exists():
            config.write_text(
                yaml.safe_dump(
                    {
                        "model_list": [
                            {
                                "model_name": "m",
                                "litellm_params": {
                                    "model": "openai/m",
                                    "mock_response": "ok",
                                    "api_key": "k",
                                },
                            }
                        ]
                    }
                )
            )
        async with running_app(GatewayApp(env={}, config_path=config)) as client:
            return await client.post(route, content=body)

    response = anyio.run(run)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_litellm_retries_from_router_settings_skip_a_failing_deployment(
    tmp_path: Path, upstream: Upstream, passthrough: bool
) -> None:
    # Two deployments of one group; one always fails. litellm's retries (num_retries) must turn
    # every request into a success, whichever deployment the first pick lands on.
    models = [deployment("gpt", upstream, "fail-500"), deployment("gpt", upstream, "gpt")]
    config = write(
        tmp_path,
        models,
        # allowed_fails 0: litellm cools a deployment down at its first failure, so a retry
        # goes to the healthy one instead of drawing the failing one again at random.
        router_settings={
            "num_retries": 3,
            "retry_after": 0,
            "allowed_fails": 0,
            "cooldown_time": 60,
        },
        routeiq={"passthrough": passthrough},
    )
    app = GatewayApp(env={}, config_path=config)
    async with running_app(app) as client:
        for _ in range(20):
            response = await client.post(
                "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=AUTH
            )
            assert response.status_code == 200, response.text
    served = [r.model for r in upstream.requests]
    assert served.count("gpt") == 20
    # A shuffle never picking the failing deployment first in 20 tries: odds 2**-20.
    assert "fail-500" in served  # the failing deployment was tried and retried past
