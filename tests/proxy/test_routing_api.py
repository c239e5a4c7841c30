"""RouteIQ's routing strategies through the gateway: decisions visible in headers and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from routeiq.app import GatewayApp
from routeiq.assembly.gateway import Gateway
from routeiq.errors import ConfigError, GatewayError, StartupError
from routeiq.routing.ab import assign_arm, request_key
from tests.support.asgi import running_app
from tests.support.upstream import Upstream, running_upstream

pytestmark = pytest.mark.anyio

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def deployment(upstream: Upstream, *, cost: float, quality: float) -> dict[str, Any]:
    return {
        "model_name": "gpt",
        "litellm_params": {"model": "openai/gpt", "api_base": upstream.base_url, "api_key": "k"},
        "model_info": {
            "input_cost_per_token": cost,
            "output_cost_per_token": cost,
            "quality": quality,
        },
    }


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    async with running_upstream(name="cheap") as cheap, running_upstream(name="dear") as dear:
        yield cheap, dear


def write(
    tmp_path: Path, models: list[dict[str, Any]], routing: dict[str, Any], **routeiq: Any
) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"model_list": models, "routeiq": {"routing": routing, **routeiq}})
    )
    return path


@pytest.mark.parametrize("passthrough", [True, False], ids=["fast-path", "litellm-path"])
async def test_cost_aware_routes_to_the_best_scored_deployment(
    tmp_path: Path, upstreams: tuple[Upstream, Upstream], passthrough: bool
) -> None:
    cheap, dear = upstreams
    models = [deployment(dear, cost=1e-5, quality=0.9), deployment(cheap, cost=1e-7, quality=0.8)]
    routing = {"strategy": "cost-aware", "options": {"quality_weight": 0.3}}
    app = GatewayApp(env={}, config_path=write(tmp_path, models, routing, passthrough=passthrough))
    async with running_app(app) as client:
        for _ in range(5):
            response = await client.post("/v1/chat/completions", json={"model": "gpt", **CHAT})
            assert response.status_code == 200, response.text
            assert response.headers["x-routeiq-strategy"] == "cost-aware"
            assert response.headers["x-routeiq-arm"] == "none"
        gateway = app.gateway
        assert gateway is not None and gateway.metrics is not None
        labels = {"strategy": "cost-aware", "arm": "none"}
        assert (
            gateway.metrics.registry.get_sample_value("gateway_routing_decisions_total", labels)
            == 5
        )
    assert (cheap.statistics().requests, dear.statistics().requests) == (5, 0)


async def test_weighted_ab_is_sticky_per_user_and_visible(
    tmp_path: Path, upstreams: tuple[Upstream, Upstream]
) -> None:
    cheap, dear = upstreams
    models = [deployment(dear, cost=1e-5, quality=0.9), deployment(cheap, cost=1e-7, quality=0.8)]
    arms = {
        "control": {"strategy": "simple-shuffle", "weight": 50},
        "treatment": {"strategy": "cost-aware", "weight": 50, "options": {"quality_weight": 0.0}},
    }
    routing = {"strategy": "weighted-ab", "options": {"arms": arms, "salt": "exp-1"}}
    app = GatewayApp(env={}, config_path=write(tmp_path, models, routing))
    users = [f"user-{n}" for n in range(12)]
    async with running_app(app) as client:
        seen: dict[str, set[str]] = {}
        for _ in range(3):
            for user in users:
                body = {"model": "gpt", "user": user, **CHAT}
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                assert response.headers["x-routeiq-strategy"] == "weighted-ab"
                seen.setdefault(user, set()).add(response.headers["x-routeiq-arm"])
        gateway = app.gateway
        assert gateway is not None and gateway.metrics is not None
        registry = gateway.metrics.registry
        counts = {
            arm: registry.get_sample_value(
                "gateway_routing_decisions_total", {"strategy": "weighted-ab", "arm": arm}
            )
            or 0
            for arm in ("control", "treatment")
        }
    weights = {"control": 50.0, "treatment": 50.0}
    expected = {
        user: assign_arm(request_key({"user": user}), weights, salt="exp-1") for user in users
    }
    assert {
        user: arms_seen.pop() for user, arms_seen in seen.items() if len(arms_seen) == 1
    } == expected
    assert counts == {
        arm: 3 * list(expected.values()).count(arm) for arm in ("control", "treatment")
    }


async def test_unknown_strategy_fails_at_configure(
    tmp_path: Path, upstreams: tuple[Upstream, Upstream]
) -> None:
    cheap, _ = upstreams
    path = write(
        tmp_path, [deployment(cheap, cost=1e-7, quality=0.8)], {"strategy": "fastest-please"}
    )
    gateway = Gateway(env={}, config_path=path)
    with pytest.raises(StartupError) as info:
        await gateway.run()
    assert info.value.phase == "configure"
    assert isinstance(info.value.cause, ConfigError)
    assert info.value.cause.problems[0][0] == "routeiq.routing.strategy"


async def test_bad_ab_weights_fail_at_configure(
    tmp_path: Path, upstreams: tuple[Upstream, Upstream]
) -> None:
    cheap, _ = upstreams
    arms = {"a": {"strategy": "simple-shuffle", "weight": 0}}
    routing = {"strategy": "weighted-ab", "options": {"arms": arms}}
    gateway = Gateway(
        env={}, config_path=write(tmp_path, [deployment(cheap, cost=1e-7, quality=0.8)], routing)
    )
    with pytest.raises(StartupError) as info:
        await gateway.run()
    assert info.value.phase == "configure"
    assert "routeiq.routing.options.arms.a.weight" in str(info.value)


async def test_the_registry_freezes_at_serving(
    tmp_path: Path, upstreams: tuple[Upstream, Upstream]
) -> None:
    cheap, _ = upstreams
    app = GatewayApp(
        env={}, config_path=write(tmp_path, [deployment(cheap, cost=1e-7, quality=0.8)], {})
    )
    async with running_app(app):
        gateway = app.gateway
        assert gateway is not None and gateway.strategies.frozen
        with pytest.raises(GatewayError, match="frozen"):
            gateway.strategies.register("late", lambda options, ctx: None)  # type: ignore[arg-type,return-value]
