"""The strategy registry: names, freezing, config errors with their paths, and installing a
strategy on one Router through litellm's hook."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from routeiq.config.model import RoutingSettings
from routeiq.errors import ConfigError, GatewayError
from routeiq.routing.cost_aware import CostAwareStrategy
from routeiq.routing.decisions import RoutingDecision, recording_decisions
from routeiq.routing.registry import StrategyRegistry, StrategySpec, default_registry
from routeiq.routing.strategies import LITELLM_STRATEGIES, SELECTOR_ATTRIBUTES, Choice

from .helpers import chat, mock_deployment

pytestmark = pytest.mark.anyio


def paths(error: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [path for path, _ in error.value.problems]


class FirstById:
    name = "first-by-id"

    async def choose(self, selection):
        return Choice(min(selection.candidates, key=lambda d: d["model_info"]["id"]))


def test_default_registry_knows_litellm_and_routeiq_strategies(litellm):
    from litellm.router_rust.steps.selection import SELECTOR_ATTRIBUTES as litellm_selectors
    from litellm.types.litellm_params import RoutingStrategyName

    assert set(LITELLM_STRATEGIES) == set(typing.get_args(RoutingStrategyName)) - {"lar1"}
    assert dict(SELECTOR_ATTRIBUTES) == dict(litellm_selectors)
    registry = default_registry()
    assert set(registry.names()) == {*LITELLM_STRATEGIES, "cost-aware", "weighted-ab"}
    assert default_registry() is not registry


def test_register_after_freeze_raises():
    registry = default_registry()
    registry.register("first-by-id", lambda options, ctx: FirstById())
    registry.freeze()
    assert registry.frozen
    with pytest.raises(GatewayError, match=r"Cannot register routing strategy 'late' after"):
        registry.register("late", lambda options, ctx: FirstById())
    assert "late" not in registry
    assert "first-by-id" in registry


@pytest.mark.parametrize("name", ["cost-aware", "Bad_Name", ""])
def test_register_refuses_duplicates_and_bad_names(name):
    with pytest.raises(GatewayError):
        default_registry().register(name, lambda options, ctx: FirstById())


async def test_unknown_strategy_names_its_config_path(make_router):
    router = make_router([mock_deployment("chat", "a")])
    with pytest.raises(ConfigError) as error:
        default_registry().install(router, RoutingSettings(strategy="fastest"))
    assert paths(error) == ["routeiq.routing.strategy"]
    assert "unknown routing strategy 'fastest'" in str(error.value)
    assert "cost-aware" in str(error.value)


async def test_bad_options_name_every_bad_field(make_router):
    router = make_router([mock_deployment("chat", "a")])
    config = RoutingSettings(strategy="cost-aware", options={"quality_weight": 2, "typo": 1})
    with pytest.raises(ConfigError) as error:
        default_registry().install(router, config)
    assert paths(error) == [
        "routeiq.routing.options.quality_weight",
        "routeiq.routing.options.typo",
    ]


def test_spec_accepts_names_mappings_and_settings():
    assert StrategySpec.of("cost-aware") == StrategySpec("cost-aware")
    assert StrategySpec.of(None) == StrategySpec()
    assert StrategySpec.of({"strategy": "x", "options": {"a": 1}}) == StrategySpec("x", {"a": 1})
    settings = RoutingSettings(strategy="x", options={"a": 1})
    assert StrategySpec.of(settings) == StrategySpec("x", {"a": 1})
    with pytest.raises(ConfigError) as error:
        StrategySpec.of({"strategy": "x", "weights": {}}, "custom.path")
    assert paths(error) == ["custom.path.weights"]


async def test_installed_strategy_picks_through_litellms_hook(make_router):
    router = make_router([mock_deployment("chat", "b"), mock_deployment("chat", "a")])
    registry = default_registry()
    registry.register("first-by-id", lambda options, ctx: FirstById())
    seen: list[RoutingDecision] = []
    hook = registry.install(router, "first-by-id", on_decision=seen.append)
    assert hook.strategy.name == "first-by-id"
    for _ in range(5):
        reply = await chat(router)
        assert reply.choices[0].message.content == "hi from a"
    assert {d.deployment_id for d in seen} == {"a"}
    assert len(seen) == 5


async def test_two_routers_with_different_strategies_do_not_interfere(make_router):
    model_list = [
        mock_deployment("chat", "cheap", input_cost_per_token=1e-7, quality=0.2),
        mock_deployment("chat", "smart", input_cost_per_token=1e-5, quality=0.9),
    ]
    by_cost, by_quality, untouched = (make_router(model_list) for _ in range(3))
    registry = default_registry()
    registry.install(by_cost, {"strategy": "cost-aware", "options": {"quality_weight": 0}})
    registry.install(by_quality, {"strategy": "cost-aware", "options": {"quality_weight": 1}})
    with recording_decisions() as decisions:
        for _ in range(3):
            assert (await chat(by_cost)).choices[0].message.content == "hi from cheap"
            assert (await chat(by_quality)).choices[0].message.content == "hi from smart"
            await chat(untouched)
    # The Router without RouteIQ routing never called a RouteIQ hook.
    assert [d.deployment_id for d in decisions.decisions] == ["cheap", "smart"] * 3


async def test_builtin_strategy_runs_on_a_router_configured_with_it(make_router):
    router = make_router([mock_deployment("chat", "a"), mock_deployment("chat", "b")])
    hook = default_registry().install(router, "latency-based-routing")
    assert router.settings().routing_strategy == "latency-based-routing"
    with recording_decisions() as decisions:
        for _ in range(4):
            await chat(router)
    assert {d.strategy for d in decisions.decisions} == {"latency-based-routing"}
    assert {d.deployment_id for d in decisions.decisions} <= {"a", "b"}
    assert hook.strategy.name == "latency-based-routing"


async def test_no_strategy_means_the_routers_own(make_router):
    router = make_router([mock_deployment("chat", "a")], routing_strategy="least-busy")
    hook = default_registry().install(router, RoutingSettings())
    assert hook.strategy.name == "least-busy"
    with recording_decisions() as decisions:
        await chat(router)
    assert decisions.last is not None
    assert decisions.last.strategy == "least-busy"


async def test_litellm_rejecting_strategy_args_is_a_config_error(make_router):
    router = make_router([mock_deployment("chat", "a")])
    config = {"strategy": "latency-based-routing", "options": {"ttl": "soon"}}
    with pytest.raises(ConfigError) as error:
        default_registry().install(router, config)
    assert paths(error) == ["routeiq.routing.options"]


async def test_two_stateful_litellm_strategies_cannot_share_a_router(make_router):
    router = make_router([mock_deployment("chat", "a")])
    arms = {
        "a": {"strategy": "least-busy", "weight": 1},
        "b": {"strategy": "latency-based-routing", "weight": 1},
    }
    with pytest.raises(ConfigError) as error:
        default_registry().install(router, {"strategy": "weighted-ab", "options": {"arms": arms}})
    assert paths(error) == [
        "routeiq.routing.options.arms.a.options",
        "routeiq.routing.options.arms.b.options",
    ]


async def test_create_builds_without_installing(make_router):
    router = make_router([mock_deployment("chat", "a")])
    registry: StrategyRegistry = default_registry()
    strategy = registry.create("cost-aware", {"quality_weight": 0.25}, router)
    assert isinstance(strategy, CostAwareStrategy)
    assert strategy.quality_weight == 0.25
    with pytest.raises(ConfigError) as error:
        registry.create("simple-shuffle", {"x": 1}, router, path="p")
    assert paths(error) == ["p.options.x"]


def test_importing_routing_does_not_import_litellm():
    code = (
        "import sys, routeiq.routing.registry, routeiq.routing.decisions; "
        "assert 'litellm' not in sys.modules, 'litellm imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
