"""Request entry in-process: validation, hostile JSON, request ids, accounting, 500s, OpenAPI."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import routeiq.proxy.routes
from routeiq.app import GatewayApp
from routeiq.http.request_id import request_id
from routeiq.proxy.mock import DEFAULT_DIMENSIONS
from tests.proxy.test_api import AUTH, CHAT, KEY, deployment, write
from tests.support.asgi import running_app
from tests.support.upstream import Upstream, running_upstream

pytestmark = pytest.mark.anyio


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with running_upstream() as up:
        yield up


@pytest.fixture(params=[True, False], ids=["fast-path", "litellm-path"])
def passthrough(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def sample(app: GatewayApp, name: str, labels: dict[str, str] | None = None) -> float:
    gateway = app.gateway
    assert gateway is not None and gateway.metrics is not None
    return gateway.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def requests_counted(app: GatewayApp, route: str, status_class: str) -> float:
    gateway = app.gateway
    assert gateway is not None and gateway.metrics is not None
    registry = gateway.metrics.registry
    return sum(
        s.value
        for metric in registry.collect()
        if metric.name == "gateway_requests"
        for s in metric.samples
        if s.name == "gateway_requests_total"
        and s.labels["route"] == route
        and s.labels["status_class"] == status_class
    )


WRONG_TYPES = [
    ("/v1/chat/completions", {"n": "many", **CHAT}, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("/v1/chat/completions", {"response_format": "json", **CHAT}, "response_format"),
    ("/v1/chat/completions", {"temperature": "hot", **CHAT}, "temperature"),
    ("/v1/chat/completions", {"stop": ["a", 3], **CHAT}, "stop[1]"),
    ("/v1/chat/completions", {"tools": [{"function": {"name": "f"}}], **CHAT}, "tools[0].type"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{}]}]}, None),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"stream": 1, **CHAT}, "stream"),
    ("/v1/chat/completions", {"timeout": 1e-300, **CHAT}, "timeout"),
    ("/v1/completions", {"prompt": ["a", 1, None]}, "prompt[1]"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ("/v1/embeddings", {"input": {"text": "a"}}, "input"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "json"}, "encoding_format"),
]


@pytest.mark.parametrize(("route", "fields", "param"), WRONG_TYPES)
async def test_wrong_types_are_an_immediate_400_naming_the_field(
    tmp_path: Path,
    upstream: Upstream,
    passthrough: bool,
    route: str,
    fields: dict[str, Any],
    param: str | None,
) -> None:
    config = write(tmp_path, [deployment("gpt", upstream)], routeiq={"passthrough": passthrough})
    app = GatewayApp(env={}, config_path=config)
    async with running_app(app) as client:
        response = await client.post(route, json={"model": "gpt", **fields}, headers=AUTH)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == (param or "messages[0].content[0].type")
        assert error["param"] in error["message"]
        assert sample(app, "gateway_inflight_requests") == 0
    assert upstream.statistics().requests == 0


def nested(depth: int) -> bytes:
    return (
        b'{"model": "gpt", "metadata": '
        + b'{"a": ' * depth
        + b"1"
        + b"}" * depth
        + b", "
        + (json.dumps(CHAT)[1:].encode())
    )


HOSTILE = {
    "nested-999": nested(999),
    "nested-5000": nested(5000),
    "array-nested-2000": b'{"model": "gpt", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    "int-4301-digits": b'{"model": "gpt", "seed": ' + b"7" * 4301 + b", "
    + json.dumps(CHAT)[1:].encode(),
    "surrogate-key": b'{"\\ud800": 1, "model": "gpt"}',
    "surrogate-model": b'{"model": "\\udfff", "messages": []}',
    "surrogate-content": b'{"model": "gpt", "messages": [{"role": "user", "content": "a\\ud800"}]}',
    "reversed-pair": b'{"model": "gpt", "messages": '
    b'[{"role": "user", "content": "\\udc00\\ud800"}]}',
    "invalid-utf8": b'{"model": "gpt\xff"}',
}  # fmt: skip


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_json_is_a_400_and_accounted_once(
    tmp_path: Path, upstream: Upstream, body: bytes
) -> None:
    app = GatewayApp(env={}, config_path=write(tmp_path, [deployment("gpt", upstream)]))
    async with running_app(app) as client:
        response = await client.post("/v1/chat/completions", content=body, headers=AUTH)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.headers["x-request-id"]
        assert sample(app, "gateway_inflight_requests") == 0
        assert requests_counted(app, "/v1/chat/completions", "4xx") == 1
        assert (
            sample(app, "gateway_request_duration_seconds_count", {"route": "/v1/chat/completions"})
            == 1
        )
    assert upstream.statistics().requests == 0


async def test_escaped_surrogate_pairs_are_text(tmp_path: Path, upstream: Upstream) -> None:
    # json.dumps escapes non-BMP characters as a surrogate pair: that is valid and must pass.
    body = json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "hi 😀"}]})
    assert "\\ud83d\\ude00" in body
    app = GatewayApp(env={}, config_path=write(tmp_path, [deployment("gpt", upstream)]))
    async with running_app(app) as client:
        response = await client.post("/v1/chat/completions", content=body, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "[upstream] hi 😀"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def error_records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("routeiq")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_an_unexpected_exception_is_a_500_with_the_request_id_logged_once(
    tmp_path: Path, upstream: Upstream, error_records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No known input raises any more, so a bug is injected where the upstream call starts.
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the gateway")

    monkeypatch.setattr(routeiq.proxy.routes, "call_upstream", broken)
    app = GatewayApp(env={}, config_path=write(tmp_path, [deployment("gpt", upstream)]))
    exporter = InMemorySpanExporter()
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None
        gateway.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=AUTH
        )
        assert response.status_code == 500
        error = response.json()["error"]
        rid = response.headers["x-request-id"]
        assert error["code"] == "internal_error" and rid in error["message"]
        assert "a bug in the gateway" not in response.text and "Traceback" not in response.text
        assert sample(app, "gateway_inflight_requests") == 0
        labels = {"route": "/v1/chat/completions", "model": "gpt", "status_class": "5xx"}
        assert sample(app, "gateway_requests_total", labels) == 1
    [record] = error_records.records
    assert rid in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    [span] = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"


async def test_a_stream_whose_body_never_started_is_accounted_once(
    tmp_path: Path, upstream: Upstream, passthrough: bool
) -> None:
    """The client is gone before the first chunk: the send of the status line never completes,
    the disconnect cancels the response, and the body iterator never runs."""
    config = write(tmp_path, [deployment("gpt", upstream)], routeiq={"passthrough": passthrough})
    app = GatewayApp(env={}, config_path=config)
    exporter = InMemorySpanExporter()
    async with running_app(app):
        gateway = app.gateway
        assert gateway is not None
        gateway.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        body = json.dumps({"model": "gpt", "stream": True, **CHAT}).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        start_sent = anyio.Event()
        sent: list[str] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await start_sent.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])
            if message["type"] == "http.response.start":
                start_sent.set()
                await anyio.sleep_forever()  # a client that never reads

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"authorization", f"Bearer {KEY}".encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        with anyio.fail_after(20):
            await app(scope, receive, send)
        assert sent == ["http.response.start"]
        assert sample(app, "gateway_inflight_requests") == 0
        labels = {"route": "/v1/chat/completions", "model": "gpt", "status_class": "2xx"}
        assert sample(app, "gateway_requests_total", labels) == 1
        assert sample(app, "gateway_time_to_first_token_seconds_count") == 0
    assert len(exporter.get_finished_spans()) == 1


async def test_request_ids_and_duplicate_authorization(tmp_path: Path, upstream: Upstream) -> None:
    app = GatewayApp(env={}, config_path=write(tmp_path, [deployment("gpt", upstream)]))
    async with running_app(app) as client:
        own = await client.get("/health/live", headers={"x-request-id": "trace-42.a"})
        assert own.headers["x-request-id"] == "trace-42.a"
        odd = await client.get("/health/live", headers={"x-request-id": "no spaces allowed"})
        assert odd.headers["x-request-id"].startswith("req_")
        ids = {
            (await client.get("/v1/models", headers=AUTH)).headers["x-request-id"] for _ in range(3)
        }
        assert len(ids) == 3
        missing = await client.get("/v1/nope")
        assert missing.status_code == 404 and missing.headers["x-request-id"]
        two = httpx.Headers([("authorization", f"Bearer {KEY}"), ("authorization", "Bearer x")])
        twice = await client.post(
            "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=two
        )
        assert twice.status_code == 400, twice.text
        assert twice.json()["error"]["code"] == "invalid_authorization"
        reversed_ = httpx.Headers(list(reversed(two.multi_items())))
        twice = await client.post(
            "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=reversed_
        )
        assert twice.status_code == 400
        # The hot POST routes and everything else draw from one sequence, and the client's own
        # id holds there too.
        hot = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt", **CHAT},
            headers={**AUTH, "x-request-id": "trace-43"},
        )
        assert hot.headers.get_list("x-request-id") == ["trace-43"]
        mine = [await client.post("/v1/chat/completions", json={}, headers=AUTH)]
        mine.append(await client.get("/v1/models", headers=AUTH))
        first, second = (r.headers["x-request-id"] for r in mine)
        assert first[:-8] == second[:-8] and int(second[-8:], 16) == int(first[-8:], 16) + 1
    assert upstream.statistics().requests == 1


def test_a_forked_worker_draws_request_ids_of_its_own() -> None:
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id, and out without running anything of pytest's
        os.write(write_end, request_id({}).encode())
        os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    parent = request_id({})
    assert status == 0 and child.startswith("req_") and parent.startswith("req_")
    assert child[:-8] != parent[:-8]  # another random prefix, not the parent's sequence


async def test_fastapi_errors_under_v1_are_openai_errors(
    tmp_path: Path, upstream: Upstream
) -> None:
    app = GatewayApp(env={}, config_path=write(tmp_path, [deployment("gpt", upstream)]))
    async with running_app(app) as client:
        for method, path, status in [
            ("GET", "/v1/nope", 404),
            ("GET", "/v1/chat/completions", 405),
            ("DELETE", "/v1/models", 405),
        ]:
            response = await client.request(method, path, headers=AUTH)
            assert response.status_code == status
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        plain = await client.get("/_lifecycle", params={"since": "soon"})
        assert plain.status_code == 400
        assert "since" in plain.json()["error"]
        negative = await client.get("/_lifecycle", params={"limit": -1})
        assert negative.status_code == 400


async def test_models_retrieve_and_list_have_spans(tmp_path: Path, upstream: Upstream) -> None:
    app = GatewayApp(env={}, config_path=write(tmp_path, [deployment("gpt", upstream)]))
    exporter = InMemorySpanExporter()
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None
        gateway.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        listed = await client.get("/v1/models", headers=AUTH)
        one = await client.get("/v1/models/gpt", headers=AUTH)
        assert one.status_code == 200
        assert one.json() == listed.json()["data"][0]
        assert one.json()["object"] == "model"
        missing = await client.get("/v1/models/nope", headers=AUTH)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"
        assert (await client.get("/v1/models/gpt")).status_code == 401
        labels = {"route": "/v1/models/{model}", "model": "gpt", "status_class": "2xx"}
        assert sample(app, "gateway_requests_total", labels) == 1
    names = sorted(span.name for span in exporter.get_finished_spans())
    # The unauthorized request stops before its model is read.
    assert names == ["models", "models", "models gpt", "models nope"]


def floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def test_mock_model_embeddings_are_vectors_as_floats_or_base64() -> None:
    app = GatewayApp(env={})  # the embedded default: routeiq-mock, no master key
    async with running_app(app) as client:
        request = {"model": "routeiq-mock", "input": ["hello", "world", "hello"]}
        as_floats = (await client.post("/v1/embeddings", json=request)).json()
        vectors = [d["embedding"] for d in as_floats["data"]]
        assert [d["index"] for d in as_floats["data"]] == [0, 1, 2]
        assert all(len(v) == DEFAULT_DIMENSIONS for v in vectors)
        assert math.isclose(math.fsum(x * x for x in vectors[0]), 1.0, rel_tol=1e-9)
        assert vectors[0] == vectors[2] != vectors[1]
        encoded = await client.post(
            "/v1/embeddings", json={**request, "encoding_format": "base64", "dimensions": 64}
        )
        decoded = [floats(d["embedding"]) for d in encoded.json()["data"]]
        assert [len(v) for v in decoded] == [64, 64, 64]
        assert math.isclose(math.fsum(x * x for x in decoded[0]), 1.0, rel_tol=1e-5)
        too_big = await client.post("/v1/embeddings", json={**request, "dimensions": 100_000})
        assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "dimensions"


async def test_explicit_nulls_are_absent_fields_on_the_mock_model() -> None:
    """litellm raised on ``"metadata": null`` (a 502 the fuzzer found): nulls mean "not set"."""
    nulls = {"metadata": None, "user": None, "stop": None, "n": None, "stream_options": None}
    app = GatewayApp(env={})
    async with running_app(app) as client:
        requests: list[tuple[str, dict[str, Any]]] = [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
            ("/v1/completions", {"prompt": "hi"}),
        ]
        for route, body in requests:
            for stream in (False, True):
                request = {"model": "routeiq-mock", **body, **nulls, "stream": stream}
                response = await client.post(route, json=request)
                assert response.status_code == 200, response.text
                assert "[DONE]" in response.text if stream else response.json()["choices"]
        assert sample(app, "gateway_inflight_requests") == 0


async def test_openapi_describes_every_route_with_security_and_bodies() -> None:
    app = GatewayApp(env={})
    async with running_app(app) as client:
        schema = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert set(schema["paths"]) == {
        "/health/live",
        "/health/ready",
        "/_lifecycle",
        "/_lifecycle/startup",
        "/metrics",
        "/_admin/reload",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
        "/_admin/mcp/servers",
        "/_admin/mcp/servers/{name}",
    }
    schemes = schema["components"]["securitySchemes"]
    assert schemes["MasterKey"]["scheme"] == schemes["AdminKey"]["scheme"] == "bearer"
    assert schema["paths"]["/_admin/reload"]["post"]["security"] == [{"AdminKey": []}]
    components = schema["components"]["schemas"]
    mcp = [schema["paths"]["/_admin/mcp/servers"], schema["paths"]["/_admin/mcp/servers/{name}"]]
    assert [sorted(ops) for ops in mcp] == [["get", "post"], ["delete", "get", "put"]]
    for operation in [op for ops in mcp for op in ops.values()]:
        assert operation["security"] == [{"AdminKey": []}]
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    for operation, model in [
        (mcp[0]["get"], "McpServerList"),
        (mcp[0]["post"], "McpServerChange"),
        (mcp[1]["get"], "McpServerView"),
        (mcp[1]["put"], "McpServerChange"),
    ]:
        ok = min(code for code in operation["responses"] if code.startswith("2"))
        ref = operation["responses"][ok]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
    for operation in (mcp[0]["post"], mcp[1]["put"]):
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/McpServerSpec"
    assert {"name", "url"} <= set(components["McpServerSpec"]["required"])
    assert "status" in components["McpServerView"]["properties"]
    for path, model in [
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/v1/embeddings", "EmbeddingRequest"),
    ]:
        operation = schema["paths"][path]["post"]
        assert operation["security"] == [{"MasterKey": []}]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
        assert "model" in components[model]["required"]
    text = json.dumps(schema)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in components, ref
