"""The object litellm calls to pick a deployment, installed on one Router.

litellm 1.110's supported per-Router hook is ``Router.register_plugin(strategy)``: from then on
that Router (and no other) awaits ``strategy.async_get_available_deployment(model=...,
messages=..., input=..., specific_deployment=..., request_kwargs=...)`` for every pick, retries
and fallbacks included, and sends the call to the deployment dict it returns.
``request_kwargs`` is the request's own kwargs dict (``user``, ``metadata``, ``messages``,
``litellm_trace_id``, ...). The Router's deprecated ``set_custom_routing_strategy`` does the same.
A later change of the Router's ``routing_strategy`` setting removes the hook.

``RoutingHook`` asks the Router for the healthy deployments (``select(kind="healthy")``, which
runs the Router's own filters and drops deployments in cooldown), drops any that the Router's
cooldown store still lists, lets the strategy choose, and reports a ``RoutingDecision`` to the
request's recorder and to ``on_decision``. litellm hides from a custom strategy which deployment
a retry is retrying, so the hook remembers the deployments it picked for each call (the same
request dict and ``litellm_trace_id`` across retries and fallbacks, for the last few thousand
calls) and offers a retry the others first; a deterministic strategy would otherwise retry the
deployment that just failed until it cools down. The hook is duck-typed to litellm's
``CustomRoutingStrategyBase`` so that importing it does not import litellm; it serves async
calls only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from routeiq.routing.decisions import NO_ARM, RoutingDecision, current_recorder
from routeiq.routing.strategies import Selection, Strategy, deployment_id

__all__ = ["DecisionCallback", "RoutingHook"]

DecisionCallback = Callable[[RoutingDecision], None]
CallKey = tuple[int, str]
REMEMBERED_CALLS = 4096


class RoutingHook:
    def __init__(
        self, router: Any, strategy: Strategy, *, on_decision: DecisionCallback | None = None
    ) -> None:
        self.router = router
        self.strategy = strategy
        self._on_decision = on_decision
        self._tried: OrderedDict[CallKey, set[str]] = OrderedDict()

    async def async_get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, Any]] | None = None,
        input: Any = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        request = request_kwargs if request_kwargs is not None else {}
        healthy = await self.router.select(
            model,
            request,
            kind="healthy",
            messages=messages,
            input=input,
            specific_deployment=specific_deployment,
        )
        if isinstance(healthy, Mapping):
            # A deployment asked for by its id: there is nothing to choose.
            return self._decided(dict(healthy), model, NO_ARM)
        picked = await self.choose_among(model, list(healthy), request, messages, input)
        if picked is None:
            from litellm.types.router import RouterRateLimitErrorBasic

            raise RouterRateLimitErrorBasic(model=model)
        return picked

    async def choose_among(
        self,
        model: str,
        healthy: Sequence[Mapping[str, Any]],
        request: dict[str, Any],
        messages: list[dict[str, Any]] | None = None,
        input: Any = None,
        *,
        cooldowns_checked: bool = False,
    ) -> dict[str, Any] | None:
        """The strategy's pick among ``healthy`` less those cooling down (unless the caller
        already left them out), reported as a decision like any other; ``None`` when there is
        none to pick."""
        candidates = healthy if cooldowns_checked else await self._without_cooldowns(healthy)
        if not candidates:
            return None
        call = _call_key(request)
        tried = self._tried.get(call, set()) if call is not None else set()
        untried = [d for d in candidates if deployment_id(d) not in tried]
        choice = await self.strategy.choose(
            Selection(model, tuple(untried or candidates), request, messages, input)
        )
        picked = self._decided(dict(choice.deployment), model, choice.arm)
        if call is not None:
            self._remember(call, deployment_id(picked))
        return picked

    def get_available_deployment(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError(
            "RouteIQ routing serves async calls only (acompletion, aembedding, atext_completion)"
        )

    async def _without_cooldowns(
        self, healthy: Sequence[Mapping[str, Any]]
    ) -> Sequence[Mapping[str, Any]]:
        if not healthy:
            return healthy
        ids = [deployment_id(d) for d in healthy]
        cooling = await self.router.health().cooldowns.async_get_active_cooldowns(ids, None)
        cold = {model_id for model_id, _ in cooling}
        kept = [d for d, model_id in zip(healthy, ids, strict=True) if model_id not in cold]
        # The Router's own healthy list is authoritative when the two disagree about every one.
        return kept or healthy

    def _remember(self, call: CallKey, picked: str) -> None:
        self._tried.setdefault(call, set()).add(picked)
        self._tried.move_to_end(call)
        while len(self._tried) > REMEMBERED_CALLS:
            self._tried.popitem(last=False)

    def _decided(self, deployment: dict[str, Any], model: str, arm: str) -> dict[str, Any]:
        decision = RoutingDecision(self.strategy.name, arm, deployment_id(deployment), model)
        recorder = current_recorder()
        if recorder is not None:
            recorder.record(decision)
        if self._on_decision is not None:
            self._on_decision(decision)
        return deployment


def _call_key(request: Mapping[str, Any]) -> CallKey | None:
    # litellm passes one call's retries and fallbacks the same kwargs dict and trace id.
    trace = request.get("litellm_trace_id")
    return (id(request), trace) if isinstance(trace, str) and trace else None
