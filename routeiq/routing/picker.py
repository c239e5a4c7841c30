"""Deployment picks for the fast path without litellm's selection chain, where it adds nothing.

Measured here, ``Router.select`` costs ≈ 470 µs of CPU per pick (its pre-routing, callback and
pre-call steps, run for every request whether configured or not): a third of what a fast-path
request costs in all. For a model group whose configuration leaves that chain nothing to do but
drop deployments in cooldown and apply the strategy, ``DeploymentPicker`` does exactly those two
things, reading the same Router's cooldown store and running the same strategy:

- the Router has no setting that filters or limits picks: ``routing_strategy`` is unset or
  ``simple-shuffle`` without options, no ``enable_pre_call_checks``, no
  ``default_max_parallel_requests`` (RouteIQ removes the settings it does not support, such as
  tag filtering or budgets, before the Router sees them);
- the group is named by its own ``model_name`` (not an alias, not a wildcard), and every one of
  its deployments is one the caller can serve itself (``eligible``: no litellm-only parameter)
  and has no weight, rpm or tpm.

The pick is then the one litellm would make: ``simple-shuffle`` is a uniform draw among the
candidates (litellm's own draw, with no weight, rpm or tpm to weigh), and a RouteIQ strategy is
asked through its ``RoutingHook``, which reports the decision. A deployment this request already
failed is left out while there are others; when every candidate is cooling down there is no pick
(``None``), and the caller leaves the request to litellm, whose answer that is. Any other model
is not ``covered``: the caller asks the Router.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from routeiq.routing.hook import RoutingHook
from routeiq.routing.strategies import deployment_id

__all__ = ["DeploymentPicker", "plain_router_settings"]

Deployment = dict[str, Any]
# What litellm's simple-shuffle weighs a draw by (the picker's draw is uniform).
_WEIGHTS = ("weight", "rpm", "tpm")


def plain_router_settings(settings: Mapping[str, Any]) -> bool:
    """Whether the Router's settings leave its selection chain nothing but cooldowns and the
    strategy to apply."""
    return (
        settings.get("routing_strategy") in (None, "simple-shuffle")
        and not settings.get("routing_strategy_args")
        and not settings.get("enable_pre_call_checks")
        and settings.get("default_max_parallel_requests") is None
    )


class DeploymentPicker:
    def __init__(
        self, router: Any, groups: Mapping[str, Sequence[Deployment]], hook: RoutingHook | None
    ) -> None:
        self._groups = {name: tuple(group) for name, group in groups.items()}
        self._ids = {name: [deployment_id(d) for d in group] for name, group in groups.items()}
        self._cooldowns = router.health().cooldowns
        self._store = self._cooldowns.cooldown_store
        self._hook = hook

    @classmethod
    def for_router(
        cls,
        router: Any,
        router_settings: Mapping[str, Any],
        hook: RoutingHook | None,
        *,
        eligible: Callable[[Mapping[str, Any]], bool],
    ) -> DeploymentPicker | None:
        """The picker for ``router``'s plain model groups; ``None`` when there is none."""
        if not plain_router_settings(router_settings):
            return None
        aliases = set(router_settings.get("model_group_alias") or ())
        groups: dict[str, list[Deployment]] = {}
        refused: set[str] = set(aliases)
        for entry in router.registry().all():
            deployment = _plain(entry)
            name = deployment.get("model_name")
            if not isinstance(name, str) or "*" in name or name in refused:
                continue
            params = deployment.get("litellm_params") or {}
            weighed = any(params.get(key) for key in _WEIGHTS)
            if not deployment_id(deployment) or weighed or not eligible(deployment):
                refused.add(name)
                groups.pop(name, None)
                continue
            groups.setdefault(name, []).append(deployment)
        return cls(router, groups, hook) if groups else None

    def covers(self, model: str) -> bool:
        return model in self._groups

    async def pick(
        self,
        model: str,
        request: dict[str, Any],
        *,
        excluded: Sequence[str] = (),
        messages: Any = None,
        input: Any = None,
    ) -> Deployment | None:
        """A deployment of the covered group ``model``, not cooling down and not ``excluded``;
        ``None`` when no deployment is left."""
        group, ids = self._groups[model], self._ids[model]
        # The synchronous read of the same in-memory store (RouteIQ never gives the Router
        # Redis); the async one goes through litellm's context plumbing (15 µs against 10
        # in a micro-benchmark). The store's snapshot holds the live cooldowns, and is empty
        # but for failures: then the read is skipped (0.2 µs against 10, measured here).
        cooling: Sequence[tuple[str, Any]] = ()
        if self._store.snapshot():
            cooling = self._cooldowns.get_active_cooldowns(ids, None)
        healthy: Sequence[Deployment] = group
        if cooling or excluded:
            left_out = {model_id for model_id, _ in cooling}
            left_out.update(excluded)
            healthy = [d for d, i in zip(group, ids, strict=True) if i not in left_out]
            if not healthy:
                return None
        if self._hook is not None:
            return await self._hook.choose_among(
                model, healthy, request, messages, input, cooldowns_checked=True
            )
        # litellm's simple-shuffle draws by weight, rpm or tpm when a deployment has one; a
        # covered group's deployments have none (they are litellm-only parameters), and its
        # draw is then uniform.
        return random.choice(healthy)


def _plain(value: Any) -> Any:
    """The Router's deployment entry (a read-only view) as plain, mutable dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
