"""Bounded work per request (``routeiq.limits``): refused before any work, in OpenAI's format.

In-process for what the app decides (field bounds, nesting, the in-flight cap); real
``routeiq serve`` processes for what depends on the server (a body trickling in, the listen
backlog, a client that leaves while its upstream call is in progress).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from routeiq.app import GatewayApp
from routeiq.config.loader import parse_config
from routeiq.config.model import LimitsSettings
from routeiq.errors import ConfigError
from routeiq.proxy.limits import listen_backlog
from tests.support.asgi import running_app
from tests.support.procs import GatewayProcess, start_gateway
from tests.support.upstream import Upstream, running_upstream

pytestmark = pytest.mark.anyio
__all__ = ["start_gateway"]

KEY = "sk-master-key-123456"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = {"messages": [{"role": "user", "content": "hello"}]}
MOCK_PARAMS: dict[str, Any] = {"model": "openai/mock", "mock_response": "ok"}
MOCK: dict[str, Any] = {"model_name": "mock", "litellm_params": MOCK_PARAMS}


def write(tmp_path: Path, models: list[dict[str, Any]], **limits: Any) -> Path:
    path = tmp_path / "config.yaml"
    document = {
        "model_list": models,
        "router_settings": {"num_retries": 0},
        "routeiq": {"master_key": KEY, "limits": limits},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def upstream_model(name: str, upstream: Upstream, model: str) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {"model": f"openai/{model}", "api_base": upstream.base_url},
    }


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with running_upstream() as up:
        yield up


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("/v1/chat/completions", "n", 1_000_000),
        ("/v1/chat/completions", "n", 5),
        ("/v1/completions", "best_of", 5),
        ("/v1/chat/completions", "max_tokens", 1001),
        ("/v1/chat/completions", "max_completion_tokens", 1e9),
        ("/v1/chat/completions", "top_logprobs", 21),
        ("/v1/completions", "logprobs", 21),
        ("/v1/embeddings", "input", ["a"] * 11),
        ("/v1/completions", "prompt", ["a"] * 11),
    ],
)
async def test_counts_above_their_limit_are_400_before_any_work(
    tmp_path: Path, upstream: Upstream, route: str, field: str, value: Any
) -> None:
    models = [upstream_model("gpt", upstream, "gpt"), MOCK]
    config = write(tmp_path, models, max_n=4, max_output_tokens=1000, max_input_items=10)
    body: dict[str, Any] = {"model": "gpt", "prompt": "hi", "input": "hi", **CHAT}
    body = {k: v for k, v in body.items() if k in {"model", _main_field(route)}}
    async with running_app(GatewayApp(env={}, config_path=config)) as client:
        started = time.monotonic()
        refused = await client.post(route, json={**body, field: value}, headers=AUTH)
        mocked = await client.post(
            route, json={**body, "model": "mock", field: value}, headers=AUTH
        )
        elapsed = time.monotonic() - started
    for response in (refused, mocked):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (field, "limit_exceeded")
        assert error["type"] == "invalid_request_error"
        assert "routeiq.limits." in error["message"]
    assert upstream.statistics().requests == 0
    assert elapsed < 10, "refused before any work (n=1000000 on the mock model took 37 s)"


def _main_field(route: str) -> str:
    return {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}.get(route, "input")


async def test_values_within_the_limits_are_served(tmp_path: Path, upstream: Upstream) -> None:
    config = write(tmp_path, [upstream_model("gpt", upstream, "gpt")], max_n=4)
    async with running_app(GatewayApp(env={}, config_path=config)) as client:
        ok = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt", "n": 4, "max_tokens": 100, "top_logprobs": 20, **CHAT},
            headers=AUTH,
        )
    assert ok.status_code == 200, ok.text
    assert upstream.statistics().requests == 1


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (json.dumps({"model": "mock", "metadata": {"a": [[[[[[[[[[1]]]]]]]]]]}, **CHAT}), "deep"),
        ('{"model": "mock", "metadata": ' + "[" * 3000 + "]" * 3000 + "}", "deeper"),
        ('{"model": "mock", "seed": ' + "9" * 5000 + "}", "huge integer"),
        (b'{"model": "mock", "user": "\xff"}', "not UTF-8"),
    ],
    ids=["depth-over-limit", "depth-past-recursion", "huge-int", "not-utf8"],
)
async def test_hostile_json_is_a_400(tmp_path: Path, body: str | bytes, what: str) -> None:
    config = write(tmp_path, [MOCK], max_json_depth=8)
    async with running_app(GatewayApp(env={}, config_path=config)) as client:
        response = await client.post("/v1/chat/completions", content=body, headers=AUTH)
    assert response.status_code == 400, (what, response.text)
    assert response.json()["error"]["code"] == "invalid_json"


async def test_the_inflight_cap_sheds_with_503_and_retry_after_before_reading_the_body(
    tmp_path: Path, upstream: Upstream
) -> None:
    config = write(
        tmp_path, [upstream_model("gpt", upstream, "hang")], max_inflight=2, retry_after_s=3
    )
    app = GatewayApp(env={}, config_path=config)
    async with running_app(app) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(
                    lambda: client.post(
                        "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=AUTH
                    )
                )
            with anyio.fail_after(20):
                await upstream.wait_for(lambda s: s.in_flight == 2)
            # Not JSON: a 400 if the body were read; the cap answers first.
            shed = await client.post("/v1/chat/completions", content=b"{not json", headers=AUTH)
            # The client picks paths, not series: a model path counts as /v1/models, and an
            # unknown path is the app's 404, neither shed nor a new label value.
            retrieve = await client.get("/v1/models/gpt", headers=AUTH)
            unknown = await client.post("/v1/made-up-route-1234", json={}, headers=AUTH)
            tg.cancel_scope.cancel()
        assert retrieve.status_code == 503, retrieve.text
        assert unknown.status_code == 404, unknown.text
        assert shed.status_code == 503, shed.text
        assert shed.headers["retry-after"] == "3"
        error = shed.json()["error"]
        assert (error["type"], error["code"]) == ("service_unavailable", "overloaded")
        gateway = app.gateway
        assert gateway is not None and gateway.metrics is not None
        registry = gateway.metrics.registry
        labels = {"route": "/v1/chat/completions"}
        assert registry.get_sample_value("gateway_requests_shed_total", labels) == 1
        models = {"route": "/v1/models"}
        assert registry.get_sample_value("gateway_requests_shed_total", models) == 1
        routes = {
            s.labels["route"]
            for metric in registry.collect()
            if metric.name == "gateway_requests_shed"
            for s in metric.samples
        }
        assert "/v1/chat/completions" in routes, routes
        assert "/v1/made-up-route-1234" not in routes and "/v1/models/gpt" not in routes, routes
        with anyio.fail_after(20):
            await upstream.wait_for(lambda s: s.in_flight == 0)
        # The two cancelled requests left the cap: new requests are served again.
        again = await client.get("/v1/models", headers=AUTH)
        assert again.status_code == 200
    assert upstream.statistics().requests == 2


def test_bad_limits_are_config_errors_naming_the_field() -> None:
    document = {"model_list": [MOCK], "routeiq": {"limits": {"max_inflight": 0, "max_n": "x"}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, {}, source="test")
    rendered = caught.value.render()
    assert "routeiq.limits.max_inflight" in rendered
    assert "routeiq.limits.max_n" in rendered


def test_the_listen_backlog_is_sized_for_the_inflight_cap() -> None:
    assert listen_backlog(LimitsSettings()) >= 1024
    assert listen_backlog(LimitsSettings(max_inflight=4000)) == 8000


# --- real server processes ----------------------------------------------------------------


def serve(start_gateway: Any, tmp_path: Path, models: list[dict[str, Any]], **limits: Any) -> Any:
    config = write(tmp_path, models, **limits)
    document = yaml.safe_load(config.read_text())
    document["routeiq"]["drain"] = {"delay_s": 0, "timeout_s": 2}  # a quick stop at teardown
    config.write_text(yaml.safe_dump(document))
    gateway: GatewayProcess = start_gateway("serve", args=["--config", str(config)])
    gateway.wait_ready()
    return gateway


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_body_trickling_in_is_cut_with_408(tmp_path: Path, start_gateway: Any) -> None:
    gateway = serve(start_gateway, tmp_path, [MOCK], body_timeout_s=1.0)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        f"authorization: Bearer {KEY}\r\ncontent-type: application/json\r\n"
        "content-length: 1000000\r\n\r\n"
    ).encode()
    stream = await anyio.connect_tcp("127.0.0.1", gateway.port)
    async with stream:
        await stream.send(head)
        answer = b""
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def trickle() -> None:
                    for _ in range(600):  # one byte every 50 ms, forever as far as we care
                        await stream.send(b" ")
                        await anyio.sleep(0.05)

                tg.start_soon(trickle)
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive()
                tg.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_burst_past_the_cap_gets_503s_not_resets(
    tmp_path: Path, start_gateway: Any
) -> None:
    slow = {"model_name": "mock", "litellm_params": {**MOCK_PARAMS, "mock_delay": 1.0}}
    gateway = serve(start_gateway, tmp_path, [slow], max_inflight=8)
    ss = await anyio.run_process(["ss", "-Hltn", f"sport = :{gateway.port}"])
    listening = ss.stdout.decode().split()
    assert listening[2] == str(listen_backlog(LimitsSettings(max_inflight=8)))  # Send-Q: backlog
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        f"authorization: Bearer {KEY}\r\ncontent-type: application/json\r\n"
        "connection: close\r\n"
    )
    body = json.dumps({"model": "mock", **CHAT}).encode()
    raw = request.encode() + f"content-length: {len(body)}\r\n\r\n".encode() + body
    statuses: list[str] = []

    async def one() -> None:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", gateway.port)
            async with stream:
                await stream.send(raw)
                answer = b""
                while b"\r\n" not in answer:
                    answer += await stream.receive()
            statuses.append(answer.split(b" ")[1].decode())
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            statuses.append(type(exc).__name__)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(300):
                tg.start_soon(one)
    counts = {status: statuses.count(status) for status in set(statuses)}
    assert set(counts) <= {"200", "503"}, counts
    assert counts.get("503", 0) > 0 and counts.get("200", 0) >= 8, counts
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{gateway.url}/metrics")).text
    shed = [
        line for line in metrics.splitlines() if line.startswith("gateway_requests_shed_total{")
    ]
    assert shed and float(shed[0].split()[-1]) == counts["503"], shed


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_clients_that_leave_cancel_their_upstream_calls(
    tmp_path: Path, start_gateway: Any, upstream: Upstream
) -> None:
    clients = 10
    gateway = serve(start_gateway, tmp_path, [upstream_model("gpt", upstream, "hang")])
    async with anyio.create_task_group() as tg:
        for _ in range(clients):

            async def leave_later() -> None:
                async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
                    await client.post(
                        "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=AUTH
                    )

            tg.start_soon(leave_later)
        with anyio.fail_after(30):
            await upstream.wait_for(lambda s: s.in_flight == clients)
        tg.cancel_scope.cancel()  # every client closes its connection
    with anyio.fail_after(30):
        stats = await upstream.wait_for(lambda s: s.in_flight == 0)
    assert stats.requests == clients  # one attempt each, none retried after the client left
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        metrics = (await client.get("/metrics")).text
    assert "gateway_inflight_requests 0.0" in metrics.splitlines()
