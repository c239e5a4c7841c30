"""cost-aware: scoring is a pure function of quality and price; through a real Router against
real upstreams it picks the best deployment and skips deployments cooling down after failures."""

from __future__ import annotations

import pytest

from routeiq.errors import ConfigError
from routeiq.routing.cost_aware import (
    CostAwareStrategy,
    deployment_cost,
    deployment_quality,
    score_deployments,
)
from routeiq.routing.decisions import recording_decisions
from routeiq.routing.registry import default_registry
from tests.support.upstream import running_upstream

from .helpers import chat, deployment, mock_deployment

pytestmark = pytest.mark.anyio


def d(deployment_id, **model_info):
    return {
        "litellm_params": {"model": "openai/x"},
        "model_info": {"id": deployment_id, **model_info},
    }


def ranking(candidates, quality_weight):
    return [s.deployment_id for s in score_deployments(candidates, quality_weight)]


def test_price_and_quality_are_read_from_model_info_then_litellm_params():
    assert deployment_cost(d("a", input_cost_per_token=1e-6, output_cost_per_token=2e-6)) == 3e-6
    from_params = {"litellm_params": {"input_cost_per_token": 4e-6}, "model_info": {"id": "b"}}
    assert deployment_cost(from_params) == 4e-6
    assert deployment_cost(d("c")) is None
    assert deployment_quality(d("a")) == 0.5
    assert deployment_quality(d("a", quality=0.9)) == 0.9


def test_quality_weight_trades_quality_against_normalized_cost():
    cheap = d("cheap", input_cost_per_token=1e-6, quality=0.3)
    smart = d("smart", input_cost_per_token=1e-5, quality=0.9)
    middle = d("middle", input_cost_per_token=2e-6, quality=0.6)
    assert ranking([smart, cheap, middle], 0.0) == ["cheap", "middle", "smart"]
    assert ranking([smart, cheap, middle], 1.0) == ["smart", "middle", "cheap"]
    # 0.5: cheap 0.15-0.05=0.10, middle 0.30-0.10=0.20, smart 0.45-0.50=-0.05
    assert ranking([smart, cheap, middle], 0.5) == ["middle", "cheap", "smart"]
    scored = {s.deployment_id: s.score for s in score_deployments([smart, cheap, middle], 0.5)}
    assert scored == pytest.approx({"cheap": 0.10, "middle": 0.20, "smart": -0.05})


def test_ties_go_to_the_smallest_id_and_unpriced_deployments_count_as_dearest():
    assert ranking([d("b"), d("c"), d("a")], 0.5) == ["a", "b", "c"]
    priced = d("priced", input_cost_per_token=1e-5)
    assert ranking([d("unpriced"), priced], 0.0) == ["priced", "unpriced"]


def test_quality_weight_is_validated():
    with pytest.raises(ConfigError):
        CostAwareStrategy(1.5)


async def test_bad_prices_and_qualities_in_the_model_list_name_their_paths(make_router):
    router = make_router(
        [
            mock_deployment("chat", "a", quality=1.5),
            mock_deployment("chat", "b", input_cost_per_token=-1),
        ]
    )
    with pytest.raises(ConfigError) as error:
        default_registry().install(router, "cost-aware")
    assert [path for path, _ in error.value.problems] == [
        "model_list[0].model_info.quality",
        "model_list[1].model_info.input_cost_per_token",
    ]


async def test_picks_the_best_deployment_through_a_router(make_router):
    async with (
        running_upstream(name="cheap") as cheap,
        running_upstream(name="smart") as smart,
    ):
        router = make_router(
            [
                deployment("chat", "cheap", cheap, input_cost_per_token=1e-7, quality=0.4),
                deployment("chat", "smart", smart, input_cost_per_token=1e-6, quality=0.95),
            ]
        )
        default_registry().install(
            router, {"strategy": "cost-aware", "options": {"quality_weight": 0.9}}
        )
        replies = [await chat(router) for _ in range(4)]
    assert {r.system_fingerprint for r in replies} == {smart.identity}
    assert (cheap.statistics().requests, smart.statistics().requests) == (0, 4)


async def test_skips_a_deployment_cooling_down_after_real_failures(make_router):
    async with running_upstream(name="cheap") as cheap, running_upstream(name="dear") as dear:
        router = make_router(
            [
                deployment("chat", "cheap", cheap, model="fail-500", input_cost_per_token=1e-7),
                deployment("chat", "dear", dear, input_cost_per_token=1e-5),
            ],
            num_retries=0,
            allowed_fails=0,
            cooldown_time=60,
        )
        default_registry().install(
            router, {"strategy": "cost-aware", "options": {"quality_weight": 0}}
        )
        with pytest.raises(Exception, match="injected fault"):
            await chat(router)
        cooling = await router.health().cooldowns.async_get_active_cooldowns(
            ["cheap", "dear"], None
        )
        assert [model_id for model_id, _ in cooling] == ["cheap"]
        with recording_decisions() as decisions:
            replies = [await chat(router) for _ in range(3)]
    assert {r.system_fingerprint for r in replies} == {dear.identity}
    assert {x.deployment_id for x in decisions.decisions} == {"dear"}
    assert cheap.statistics().requests == 1


async def test_a_retry_moves_to_the_next_best_before_any_cooldown(make_router):
    async with running_upstream(name="cheap") as cheap, running_upstream(name="dear") as dear:
        router = make_router(
            [
                deployment("chat", "cheap", cheap, model="fail-500", input_cost_per_token=1e-7),
                deployment("chat", "dear", dear, input_cost_per_token=1e-5),
            ],
            num_retries=1,
            allowed_fails=5,
        )
        default_registry().install(
            router, {"strategy": "cost-aware", "options": {"quality_weight": 0}}
        )
        with recording_decisions() as decisions:
            reply = await chat(router)
        with recording_decisions() as later:
            await chat(router)
    assert reply.system_fingerprint == dear.identity
    assert [x.deployment_id for x in decisions.decisions] == ["cheap", "dear"]
    # Not cooling down yet, the cheap deployment is tried first again by the next request.
    assert [x.deployment_id for x in later.decisions] == ["cheap", "dear"]


async def test_cooldown_on_one_router_does_not_affect_another(make_router):
    model_list = [
        mock_deployment("chat", "cheap", input_cost_per_token=1e-7),
        mock_deployment("chat", "dear", input_cost_per_token=1e-5),
    ]
    first, second = make_router(model_list), make_router(model_list)
    registry = default_registry()
    for router in (first, second):
        registry.install(router, {"strategy": "cost-aware", "options": {"quality_weight": 0}})
    first.health().cooldowns.add_deployment_to_cooldown("cheap", RuntimeError("down"), 500, 60)
    assert (await chat(first)).choices[0].message.content == "hi from dear"
    assert (await chat(second)).choices[0].message.content == "hi from cheap"
