"""Upstream failure semantics, clause by clause, against the real loopback upstream.

A request makes at most 1 + num_retries upstream attempts per model group (fast path and litellm
together), within one deadline (the operator's timeout, which a client may only shorten); a 4xx
is not retried; an invalid 200 body is a 502; bad usage numbers never fail a request. The
upstream's own counters (``statistics().requests``) say how many attempts reached it.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from routeiq.app import GatewayApp
from routeiq.proxy.passthrough import AttemptFailed, Passthrough, Target
from tests.support.asgi import LifespanDriver, running_app
from tests.support.upstream import Upstream, running_upstream

pytestmark = pytest.mark.anyio

KEY = "sk-master-key-123456"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def deployment(name: str, api_base: str, upstream_model: str) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{upstream_model}",
            "api_base": api_base,
            "api_key": "sk-upstream-secret-987",
        },
    }


def config(
    tmp_path: Path,
    models: list[dict[str, Any]],
    *,
    passthrough: bool,
    router_settings: dict[str, Any],
) -> Path:
    path = tmp_path / "config.yaml"
    document = {
        "model_list": models,
        "router_settings": router_settings,
        "routeiq": {"master_key": KEY, "passthrough": passthrough},
    }
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with running_upstream() as up:
        yield up


@pytest.fixture(params=[True, False], ids=["fast-path", "litellm-path"])
def passthrough(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def chat(
    tmp_path: Path,
    upstream: Upstream,
    upstream_model: str,
    *,
    passthrough: bool,
    router_settings: dict[str, Any],
    request: dict[str, Any] | None = None,
) -> httpx.Response:
    models = [deployment("gpt", upstream.base_url, upstream_model)]
    path = config(tmp_path, models, passthrough=passthrough, router_settings=router_settings)
    async with running_app(GatewayApp(env={}, config_path=path)) as client:
        started = time.monotonic()
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt", **CHAT, **(request or {})}, headers=AUTH
        )
        response.extensions["elapsed_s"] = time.monotonic() - started
        return response


FAILURES = {"fail-500": 502, "fail-503": 502, "fail-429": 429, "drop": 502}


@pytest.mark.parametrize("retries", [0, 1])
async def test_attempts_are_one_plus_the_configured_retries(
    tmp_path: Path, upstream: Upstream, passthrough: bool, retries: int
) -> None:
    models = [deployment(fault, upstream.base_url, fault) for fault in FAILURES]
    settings = {"num_retries": retries, "timeout": 10}
    path = config(tmp_path, models, passthrough=passthrough, router_settings=settings)
    async with running_app(GatewayApp(env={}, config_path=path)) as client:
        for fault, status in FAILURES.items():
            response = await client.post(
                "/v1/chat/completions", json={"model": fault, **CHAT}, headers=AUTH
            )
            assert response.status_code == status, (fault, response.text)
            hits = [r for r in upstream.requests if r.model == fault]
            assert len(hits) == 1 + retries, fault
            if passthrough:  # the fast path made every attempt itself, none went to litellm
                assert all("aiohttp" in r.headers.get("user-agent", "") for r in hits), fault


async def test_a_fast_retry_avoids_the_deployment_that_failed(
    tmp_path: Path, upstream: Upstream
) -> None:
    models = [
        deployment("gpt", upstream.base_url, "fail-500"),
        deployment("gpt", upstream.base_url, "gpt"),
    ]
    # No cooldowns: only the per-request exclusion keeps a retry off the failing deployment.
    settings = {"num_retries": 1, "allowed_fails": 1000, "disable_cooldowns": True}
    path = config(tmp_path, models, passthrough=True, router_settings=settings)
    async with running_app(GatewayApp(env={}, config_path=path)) as client:
        for _ in range(20):
            response = await client.post(
                "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=AUTH
            )
            assert response.status_code == 200, response.text
    served = [r.model for r in upstream.requests]
    assert served.count("gpt") == 20
    assert 0 < served.count("fail-500") <= 20  # drawn first about half the time, never twice


@pytest.mark.parametrize(("fault", "status"), [("fail-400", 400), ("fail-422", 400)])
async def test_an_upstream_4xx_is_not_retried_and_is_relayed(
    tmp_path: Path, upstream: Upstream, passthrough: bool, fault: str, status: int
) -> None:
    response = await chat(
        tmp_path, upstream, fault, passthrough=passthrough, router_settings={"num_retries": 2}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "sk-upstream-secret-987" not in error["message"]
    assert upstream.statistics().requests == 1


async def test_the_operator_timeout_bounds_the_whole_request_with_its_retries(
    tmp_path: Path, upstream: Upstream, passthrough: bool
) -> None:
    # Three attempts of 1 s each (plus litellm's backoff between them) would take over 3 s.
    response = await chat(
        tmp_path,
        upstream,
        "hang",
        passthrough=passthrough,
        router_settings={"num_retries": 2, "timeout": 1},
    )
    elapsed = response.extensions["elapsed_s"]
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert upstream.statistics().requests == 1
    assert elapsed < 3.0, f"a 1 s deadline answered after {elapsed:.1f}s"


async def test_a_client_timeout_only_shortens_the_deadline(
    tmp_path: Path, upstream: Upstream, passthrough: bool
) -> None:
    longer = await chat(
        tmp_path,
        upstream,
        "slow-3s",
        passthrough=passthrough,
        router_settings={"num_retries": 0, "timeout": 0.5},
        request={"timeout": 30},
    )
    assert longer.status_code == 504, longer.text
    shorter = await chat(
        tmp_path,
        upstream,
        "slow-3s",
        passthrough=passthrough,
        router_settings={"num_retries": 0, "timeout": 30},
        request={"timeout": 1},
    )
    assert shorter.status_code == 504, shorter.text
    assert shorter.extensions["elapsed_s"] < 3.0  # the upstream answers after 3 s
    assert upstream.statistics().requests == 2


async def test_fallbacks_still_rescue_a_group_whose_attempts_failed(
    tmp_path: Path, upstream: Upstream, passthrough: bool
) -> None:
    models = [
        deployment("primary", upstream.base_url, "fail-500"),
        deployment("backup", upstream.base_url, "backup"),
    ]
    settings = {"num_retries": 0, "fallbacks": [{"primary": ["backup"]}]}
    path = config(tmp_path, models, passthrough=passthrough, router_settings=settings)
    async with running_app(GatewayApp(env={}, config_path=path)) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "primary", **CHAT}, headers=AUTH
        )
    assert response.status_code == 200, response.text
    assert [r.model for r in upstream.requests] == ["fail-500", "backup"]


@pytest.mark.parametrize("fault", ["invalid-json", "html"])
async def test_an_invalid_200_body_is_a_502(
    tmp_path: Path, upstream: Upstream, passthrough: bool, fault: str
) -> None:
    response = await chat(
        tmp_path, upstream, fault, passthrough=passthrough, router_settings={"num_retries": 1}
    )
    assert response.status_code == 502, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_html_on_a_stream_request_is_a_502_not_a_relayed_stream(
    tmp_path: Path, upstream: Upstream
) -> None:
    models = [deployment("gpt", upstream.base_url, "html")]
    path = config(tmp_path, models, passthrough=True, router_settings={"num_retries": 0})
    async with running_app(GatewayApp(env={}, config_path=path)) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt", "stream": True, **CHAT}, headers=AUTH
        )
    assert response.status_code == 502, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "upstream_invalid_response"


async def test_fast_failures_cool_a_deployment_down_like_litellm_failures(
    tmp_path: Path, upstream: Upstream
) -> None:
    models = [
        deployment("gpt", upstream.base_url, "fail-500"),
        deployment("gpt", upstream.base_url, "gpt"),
    ]
    settings = {"num_retries": 1, "allowed_fails": 0, "cooldown_time": 60}
    path = config(tmp_path, models, passthrough=True, router_settings=settings)
    async with running_app(GatewayApp(env={}, config_path=path)) as client:
        for _ in range(20):
            response = await client.post(
                "/v1/chat/completions", json={"model": "gpt", **CHAT}, headers=AUTH
            )
            assert response.status_code == 200, response.text
    served = [r.model for r in upstream.requests]
    # Cooled down at its first failure: never picked again (never drawn first in 20: 2**-20).
    assert (served.count("fail-500"), served.count("gpt")) == (1, 20)


BAD_USAGE = ["usage-negative", "usage-string", "usage-huge", "usage-object", "usage-nan"]
# litellm's own response parsing refuses these (pydantic validation of its Usage type), so on
# its call path the upstream's answer is an upstream failure, not a reply to relay.
LITELLM_REFUSES = {"usage-string", "usage-huge", "usage-object", "usage-nan"}


async def test_bad_usage_is_ignored_for_metrics_and_never_fatal(
    tmp_path: Path, upstream: Upstream, passthrough: bool
) -> None:
    models = [deployment(fault, upstream.base_url, f"gpt+{fault}") for fault in BAD_USAGE]
    path = config(tmp_path, models, passthrough=passthrough, router_settings={"num_retries": 0})
    app = GatewayApp(env={}, config_path=path)
    async with running_app(app) as client:
        for fault in BAD_USAGE:
            refused = not passthrough and fault in LITELLM_REFUSES
            plain = await client.post(
                "/v1/chat/completions", json={"model": fault, **CHAT}, headers=AUTH
            )
            assert plain.status_code == (502 if refused else 200), (fault, plain.text)
            stream = {"model": fault, "stream": True, "stream_options": {"include_usage": True}}
            async with client.stream(
                "POST", "/v1/chat/completions", json={**stream, **CHAT}, headers=AUTH
            ) as response:
                assert response.status_code == 200
                lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
            # Never a cut stream: an in-band error event when litellm refused, then [DONE].
            assert lines[-1] == "data: [DONE]", (fault, lines)
            errors = [line for line in lines if line.startswith('data: {"error"')]
            assert len(errors) == (1 if refused else 0), (fault, lines)
        gateway = app.gateway
        assert gateway is not None and gateway.metrics is not None
        registry = gateway.metrics.registry
        for kind in ("input", "output"):
            value = registry.get_sample_value("gateway_tokens_total", {"type": kind}) or 0.0
            assert math.isfinite(value) and value == 0.0, (kind, value)
        assert registry.get_sample_value("gateway_inflight_requests") == 0
    assert upstream.statistics().requests == 2 * len(BAD_USAGE)


async def test_a_non_ascii_api_base_is_refused_at_configure_not_a_500(tmp_path: Path) -> None:
    # `check`, startup and reload share one validation: such a deployment never serves.
    models = [deployment("gpt", "https://\u2026/v1", "gpt")]
    path = config(tmp_path, models, passthrough=True, router_settings={"num_retries": 0})
    app = GatewayApp(env={}, config_path=path, exit_on_startup_failure=False)
    driver = LifespanDriver(app)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.run)
            reply = await driver.startup()
    finally:
        driver.close()
    assert reply["type"] == "lifespan.startup.failed", reply
    assert "api_base" in reply["message"], reply


async def test_a_non_ascii_api_base_fails_the_attempt_not_the_request() -> None:
    # Defence in depth below validation: the fast path turns the encoding error into a failed
    # attempt (retried or answered 502), never an exception that escapes as a 500.
    passthrough = Passthrough.create(default_timeout_s=5.0)
    target = Target("https://\u2026/v1", "gpt", {"content-type": "application/json"}, None, "d1")
    try:
        with pytest.raises(AttemptFailed):
            await passthrough.forward(target, "/chat/completions", CHAT, timeout_s=5.0)
    finally:
        await passthrough.close()
