"""Each request learns the routing decisions made for it, even when many requests are inside
the routing hook at the same time, for chat, streaming, text completion and embeddings."""

from __future__ import annotations

import anyio
import pytest

from routeiq.routing.ab import ArmWeight, assign_arm
from routeiq.routing.decisions import RoutingDecision, current_recorder, recording_decisions
from routeiq.routing.registry import default_registry
from routeiq.routing.strategies import Choice
from tests.support.upstream import running_upstream

from .helpers import MESSAGES, chat, deployment, mock_deployment

pytestmark = pytest.mark.anyio

REQUESTS = 60


class Barrier:
    """Holds every pick until ``parties`` picks are waiting, so all of them overlap."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.all_in = anyio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_in.set()
        await self.all_in.wait()


class Edge:
    """Chooses the first or last deployment by id, after the barrier."""

    def __init__(self, barrier: Barrier, last: bool) -> None:
        self.barrier, self.last = barrier, last

    @property
    def name(self) -> str:
        return "edge"

    async def choose(self, selection):
        await self.barrier.wait()
        ordered = sorted(selection.candidates, key=lambda d: d["model_info"]["id"])
        return Choice(ordered[-1] if self.last else ordered[0])


async def test_concurrent_requests_each_see_their_own_decision(make_router):
    barrier = Barrier(REQUESTS)
    registry = default_registry()
    registry.register("first", lambda options, ctx: Edge(barrier, last=False))
    registry.register("last", lambda options, ctx: Edge(barrier, last=True))
    arms = {"left": {"strategy": "first", "weight": 1}, "right": {"strategy": "last", "weight": 1}}
    counted: list[RoutingDecision] = []
    async with running_upstream(name="a") as up_a, running_upstream(name="b") as up_b:
        router = make_router([deployment("chat", "a", up_a), deployment("chat", "b", up_b)])
        registry.install(
            router,
            {"strategy": "weighted-ab", "options": {"arms": arms}},
            on_decision=counted.append,
        )
        results: dict[str, tuple[tuple[RoutingDecision, ...], str]] = {}

        async def one(user: str) -> None:
            with recording_decisions() as decisions:
                reply = await chat(router, user=user)
            results[user] = (decisions.decisions, reply.system_fingerprint)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(REQUESTS):
                    tg.start_soon(one, f"user-{i}")
    weights = [ArmWeight("left", 1), ArmWeight("right", 1)]
    identity = {"a": up_a.identity, "b": up_b.identity}
    arms_seen = set()
    for user, (decisions, fingerprint) in results.items():
        arm = assign_arm(f"user:{user}", weights)
        arms_seen.add(arm)
        expected = "a" if arm == "left" else "b"
        assert decisions == (RoutingDecision("weighted-ab", arm, expected, "chat"),), user
        assert fingerprint == identity[expected]
    assert len(results) == REQUESTS
    assert arms_seen == {"left", "right"}
    assert len(counted) == REQUESTS
    assert current_recorder() is None


async def test_streaming_decision_is_known_before_the_first_chunk(make_router):
    async with running_upstream(name="a") as up:
        router = make_router([deployment("chat", "a", up), deployment("chat", "b", up)])
        default_registry().install(router, "cost-aware")
        with recording_decisions() as decisions:
            stream = await router.acompletion(model="chat", messages=MESSAGES, stream=True)
        assert decisions.last == RoutingDecision("cost-aware", "none", "a", "chat")
        chunks = [chunk async for chunk in stream]
    assert chunks
    assert up.statistics().streams_completed == 1


async def test_text_completions_and_embeddings_record_decisions(make_router):
    async with running_upstream(name="a") as up:
        router = make_router([deployment("chat", "a", up), deployment("emb", "e", up)])
        default_registry().install(router, "simple-shuffle")
        with recording_decisions() as decisions:
            await router.atext_completion(model="chat", prompt="hi")
            await router.aembedding(model="emb", input=["hi"])
    assert decisions.decisions == (
        RoutingDecision("simple-shuffle", "none", "a", "chat"),
        RoutingDecision("simple-shuffle", "none", "e", "emb"),
    )


async def test_nothing_is_recorded_outside_a_recording_scope(make_router):
    async with running_upstream(name="a") as up:
        router = make_router([deployment("chat", "a", up)])
        counted: list[RoutingDecision] = []
        default_registry().install(router, "cost-aware", on_decision=counted.append)
        with recording_decisions() as outer:
            with recording_decisions() as inner:
                await chat(router)
            await chat(router)
        await chat(router)
    assert len(inner.decisions) == 1
    assert len(outer.decisions) == 1
    assert len(counted) == 3


async def test_a_pick_without_a_call_goes_through_the_hook_too(make_router):
    # Router.select(kind="pick") chooses a deployment without calling it (a pass-through path).
    router = make_router([mock_deployment("chat", "b"), mock_deployment("chat", "a")])
    default_registry().install(router, "cost-aware")
    with recording_decisions() as decisions:
        picked = await router.select("chat", {"user": "u1"}, kind="pick")
    assert picked["model_info"]["id"] == "a"
    assert decisions.decisions == (RoutingDecision("cost-aware", "none", "a", "chat"),)
