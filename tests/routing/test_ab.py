"""weighted-ab: a stable, weight-following split of keys between arms, config errors with their
paths, and a Router that sends each user to its arm's deployment."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from routeiq.errors import ConfigError
from routeiq.routing.ab import ArmWeight, assign_arm, hash_point, request_key
from routeiq.routing.decisions import recording_decisions
from routeiq.routing.registry import default_registry

from .helpers import chat, mock_deployment

pytestmark = pytest.mark.anyio

ARMS = (ArmWeight("control", 70), ArmWeight("treatment", 20), ArmWeight("holdout", 10))


def paths(error: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [path for path, _ in error.value.problems]


def test_ten_thousand_keys_follow_the_weights_within_four_sigma():
    n = 10_000
    counts = Counter(assign_arm(f"user-{i}", ARMS) for i in range(n))
    total = sum(a.weight for a in ARMS)
    for arm in ARMS:
        p = arm.weight / total
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[arm.name] - n * p) <= 4 * sigma, (arm.name, counts)


def test_a_key_always_maps_to_the_same_arm():
    keys = [f"tenant-{i}" for i in range(500)]
    first = [assign_arm(k, ARMS) for k in keys]
    assert [assign_arm(k, ARMS) for k in reversed(keys)] == first[::-1]
    assert [assign_arm(k, {a.name: a.weight for a in ARMS}) for k in keys] == first
    # Scaling every weight changes nothing: weights are normalized.
    scaled = [ArmWeight(a.name, a.weight / 10) for a in ARMS]
    assert [assign_arm(k, scaled) for k in keys] == first


def test_salt_reshuffles_keys_and_the_hash_is_uniform_in_unit_interval():
    points = [hash_point(f"k{i}") for i in range(1000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert 0.45 < sum(points) / len(points) < 0.55
    moved = sum(
        assign_arm(f"k{i}", ARMS) != assign_arm(f"k{i}", ARMS, salt="exp-2") for i in range(1000)
    )
    assert moved > 100


@pytest.mark.parametrize("arms", [[], [ArmWeight("a", 0)], [ArmWeight("a", 1), ArmWeight("b", -1)]])
def test_assign_refuses_bad_weights(arms):
    with pytest.raises(ConfigError):
        assign_arm("k", arms)


def test_request_key_prefers_user_then_tenant_then_request_id():
    assert request_key({"user": "alice", "metadata": {"tenant": "t1"}}) == "user:alice"
    assert request_key({"metadata": {"tenant": "t1"}}) == "tenant:t1"
    headers = {"X-RouteIQ-Tenant": "t2"}
    assert request_key({"metadata": {"headers": headers}}) == "tenant:t2"
    assert request_key({"proxy_server_request": {"headers": headers}}) == "tenant:t2"
    assert request_key({"metadata": {"request_id": "r1"}, "litellm_trace_id": "t"}) == "request:r1"
    assert request_key({"litellm_trace_id": "trace"}) == "request:trace"
    assert request_key({}) == "anonymous"


def ab_config(arms, **options):
    return {"strategy": "weighted-ab", "options": {"arms": arms, **options}}


@pytest.mark.parametrize(
    ("arms", "expected"),
    [
        ({}, ["routeiq.routing.options.arms"]),
        (
            {"a": {"strategy": "cost-aware", "weight": 0}},
            ["routeiq.routing.options.arms.a.weight"],
        ),
        (
            {"a": {"strategy": "cost-aware", "weight": -2}, "b": {"strategy": "cost-aware"}},
            ["routeiq.routing.options.arms.a.weight", "routeiq.routing.options.arms.b.weight"],
        ),
        (
            {"a": {"strategy": "fastest", "weight": 1}},
            ["routeiq.routing.options.arms.a.strategy"],
        ),
        (
            {"a": {"strategy": "weighted-ab", "weight": 1}},
            ["routeiq.routing.options.arms.a.strategy"],
        ),
        (
            {"a": {"strategy": "cost-aware", "weight": 1, "options": {"quality_weight": 7}}},
            ["routeiq.routing.options.arms.a.options.quality_weight"],
        ),
        (
            {"none": {"strategy": "cost-aware", "weight": 1, "wieght": 2}},
            ["routeiq.routing.options.arms.none", "routeiq.routing.options.arms.none.wieght"],
        ),
        (
            [{"name": "a", "strategy": "cost-aware", "weight": 1}, {"strategy": "cost-aware"}],
            ["routeiq.routing.options.arms[1].name"],
        ),
    ],
)
async def test_bad_arms_are_config_errors_naming_their_paths(make_router, arms, expected):
    router = make_router([mock_deployment("chat", "a")])
    with pytest.raises(ConfigError) as error:
        default_registry().install(router, ab_config(arms))
    assert paths(error) == expected


async def test_router_sends_each_user_to_its_arms_deployment(make_router):
    router = make_router(
        [
            mock_deployment("chat", "cheap", input_cost_per_token=1e-7, quality=0.2),
            mock_deployment("chat", "smart", input_cost_per_token=1e-5, quality=0.9),
        ]
    )
    arms = [
        {
            "name": "thrifty",
            "strategy": "cost-aware",
            "weight": 1,
            "options": {"quality_weight": 0},
        },
        {
            "name": "premium",
            "strategy": "cost-aware",
            "weight": 1,
            "options": {"quality_weight": 1},
        },
    ]
    default_registry().install(router, ab_config(arms, salt="s1"))
    expected_deployment = {"thrifty": "cheap", "premium": "smart"}
    weights = [ArmWeight("thrifty", 1), ArmWeight("premium", 1)]
    seen_arms = set()
    for i in range(40):
        user = f"user-{i}"
        arm = assign_arm(f"user:{user}", weights, salt="s1")
        seen_arms.add(arm)
        with recording_decisions() as decisions:
            reply = await chat(router, user=user)
        assert reply.choices[0].message.content == f"hi from {expected_deployment[arm]}"
        assert decisions.last is not None
        assert (decisions.last.strategy, decisions.last.arm) == ("weighted-ab", arm)
    assert seen_arms == {"thrifty", "premium"}


async def test_an_arm_may_run_a_litellm_strategy(make_router):
    router = make_router([mock_deployment("chat", "a"), mock_deployment("chat", "b")])
    arms = {
        "shuffle": {"strategy": "simple-shuffle", "weight": 1},
        "busy": {"strategy": "least-busy", "weight": 1},
    }
    default_registry().install(router, ab_config(arms))
    assert router.settings().routing_strategy == "least-busy"
    with recording_decisions() as decisions:
        for i in range(20):
            await chat(router, user=f"u{i}")
    assert {d.arm for d in decisions.decisions} == {"shuffle", "busy"}
