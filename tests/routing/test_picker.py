"""The fast path's picker: the same picks as the Router's own selection, for the groups it covers.

Each test builds a real litellm Router and compares the picker with ``Router.select`` on it:
which deployments can be picked, with cooldowns recorded in that Router and deployments a
request already failed, and which groups and settings the picker must leave to the Router.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from routeiq.proxy.passthrough import AttemptFailed, Passthrough
from routeiq.routing.decisions import RoutingDecision, recording_decisions
from routeiq.routing.picker import DeploymentPicker, plain_router_settings
from routeiq.routing.registry import default_registry
from routeiq.routing.strategies import Choice

pytestmark = pytest.mark.anyio

PICKS = 200
REQUEST = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


def fast(group: str, deployment_id: str, **params: Any) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": "openai/gpt",
            "api_base": "http://127.0.0.1:9/v1",
            "api_key": "k",
            **params,
        },
        "model_info": {"id": deployment_id},
    }


def picker_for(router: Any, settings: dict[str, Any], hook: Any = None) -> DeploymentPicker:
    picker = DeploymentPicker.for_router(
        router, settings, hook, eligible=lambda d: Passthrough.target(d) is not None
    )
    assert picker is not None
    return picker


async def picked_by_picker(picker: DeploymentPicker, **kwargs: Any) -> Counter[str | None]:
    counts: Counter[str | None] = Counter()
    for _ in range(PICKS):
        picked = await picker.pick("gpt", dict(REQUEST), **kwargs)
        counts[None if picked is None else picked["model_info"]["id"]] += 1
    return counts


async def picked_by_router(router: Any, **request: Any) -> Counter[str | None]:
    counts: Counter[str | None] = Counter()
    for _ in range(PICKS):
        try:
            picked = await router.select("gpt", {**REQUEST, **request})
        except Exception:  # litellm's "no deployment available"
            picked = None
        counts[None if not picked else picked["model_info"]["id"]] += 1
    return counts


def fail(router: Any, deployment_id: str) -> None:
    """A failed fast attempt, recorded as the call path records it (cools down at once with
    ``allowed_fails: 0``)."""
    failure = AttemptFailed("the upstream answered HTTP 500", status=500)
    assert router.health().record_failure(deployment_id, failure, failure.status_code)


async def test_spreads_over_the_group_like_the_router(make_router):
    router = make_router([fast("gpt", "a"), fast("gpt", "b"), fast("other", "c")])
    by_picker = await picked_by_picker(picker_for(router, {}))
    by_router = await picked_by_router(router)
    assert set(by_picker) == set(by_router) == {"a", "b"}
    # simple-shuffle without weights is uniform: 200 draws put ≥ 60 on each side (p < 1e-6).
    assert min(by_picker.values()) >= 60, by_picker


async def test_leaves_out_cooling_deployments_as_the_router_does(make_router):
    router = make_router([fast("gpt", "a"), fast("gpt", "b")], allowed_fails=0, cooldown_time=60)
    picker = picker_for(router, {})
    fail(router, "a")
    assert await picked_by_picker(picker) == await picked_by_router(router) == {"b": PICKS}
    fail(router, "b")
    # Every deployment cooling down: no pick; the call path then leaves the request to litellm.
    assert await picked_by_picker(picker) == {None: PICKS}
    assert set(await picked_by_router(router)) == {None}


async def test_avoids_deployments_this_request_failed(make_router):
    router = make_router([fast("gpt", "a"), fast("gpt", "b")])
    picker = picker_for(router, {})
    assert await picked_by_picker(picker, excluded=["a"]) == {"b": PICKS}
    assert await picked_by_router(router, _excluded_deployment_ids=["a"]) == {"b": PICKS}
    assert await picked_by_picker(picker, excluded=["a", "b"]) == {None: PICKS}


async def test_covers_only_groups_the_fast_path_serves_by_name(make_router):
    router = make_router(
        [
            fast("gpt", "a"),
            fast("limited", "b"),
            fast("limited", "c", rpm=10),  # a litellm-only parameter: litellm's selection
            fast("alias-target", "d"),
            fast("openai/*", "e"),
        ],
        model_group_alias={"alias-target": "gpt"},
    )
    picker = picker_for(router, {"model_group_alias": {"alias-target": "gpt"}})
    assert picker.covers("gpt")
    assert not picker.covers("limited")
    assert not picker.covers("alias-target")
    assert not picker.covers("openai/*")
    assert not picker.covers("unknown")


async def test_weighed_deployments_are_left_to_the_router_whatever_the_caller_serves(
    make_router,
):
    router = make_router([fast("gpt", "a"), fast("weighed", "b", weight=3), fast("weighed", "c")])
    picker = DeploymentPicker.for_router(router, {}, None, eligible=lambda d: True)
    assert picker is not None and picker.covers("gpt") and not picker.covers("weighed")


@pytest.mark.parametrize(
    "settings",
    [
        {"routing_strategy": "least-busy"},
        {"routing_strategy": "simple-shuffle", "routing_strategy_args": {"ttl": 5}},
        {"enable_pre_call_checks": True},
        {"default_max_parallel_requests": 4},
    ],
)
async def test_settings_that_filter_or_limit_picks_leave_every_pick_to_the_router(
    make_router, settings
):
    assert not plain_router_settings(settings)
    router = make_router([fast("gpt", "a")])
    picker = DeploymentPicker.for_router(router, settings, None, eligible=lambda d: True)
    assert picker is None


async def test_plain_settings_keep_the_picker(make_router):
    settings = {"routing_strategy": "simple-shuffle", "num_retries": 1, "allowed_fails": 2}
    assert plain_router_settings(settings)
    assert plain_router_settings({})


class LastById:
    name = "last-by-id"

    async def choose(self, selection):
        return Choice(max(selection.candidates, key=lambda d: d["model_info"]["id"]))


async def test_a_routeiq_strategy_chooses_through_its_hook_and_the_decision_is_recorded(
    make_router,
):
    router = make_router([fast("gpt", "a"), fast("gpt", "b")], allowed_fails=0, cooldown_time=60)
    registry = default_registry()
    registry.register("last-by-id", lambda options, ctx: LastById())
    seen: list[RoutingDecision] = []
    hook = registry.install(router, "last-by-id", on_decision=seen.append)
    picker = picker_for(router, {}, hook)
    with recording_decisions() as recorder:
        picked = await picker.pick("gpt", dict(REQUEST))
    assert picked is not None and picked["model_info"]["id"] == "b"
    assert recorder.last is not None
    assert (recorder.last.strategy, recorder.last.deployment_id) == ("last-by-id", "b")
    assert [d.deployment_id for d in seen] == ["b"]
    fail(router, "b")  # the strategy only sees what is not cooling down
    assert await picked_by_picker(picker) == {"a": PICKS}
