"""``cost-aware``: the best trade-off between a deployment's quality and its price.

Each candidate scores ``quality_weight * quality - (1 - quality_weight) * normalized_cost``:

- ``quality`` is ``model_info.quality`` (0..1, default 0.5);
- ``cost`` is the price per input token plus the price per output token, read from
  ``model_info`` (``input_cost_per_token``, ``output_cost_per_token``) or else from
  ``litellm_params``; it is normalized by the dearest candidate's cost, so it keeps its ratio
  (a 1 % dearer deployment loses 1 % of the cost term, not all of it). A candidate whose price
  is unknown is treated as the dearest, so an unpriced deployment never wins on price.

The highest score wins; ties go to the smallest deployment id, so a pick is deterministic.
Candidates are the Router's healthy deployments minus those cooling down (see ``RoutingHook``).
Litellm's own cost map is not consulted: prices come from the config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routeiq.errors import ConfigError
from routeiq.routing.strategies import (
    Choice,
    Deployment,
    OptionReader,
    Selection,
    StrategyContext,
    deployment_id,
)

__all__ = [
    "DEFAULT_QUALITY",
    "CostAwareStrategy",
    "Scored",
    "cost_aware_factory",
    "deployment_cost",
    "deployment_quality",
    "score_deployments",
]

DEFAULT_QUALITY = 0.5
_PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token")


@dataclass(frozen=True, slots=True)
class Scored:
    deployment: Deployment
    deployment_id: str
    quality: float
    cost: float | None
    score: float


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def deployment_quality(deployment: Deployment) -> float:
    info = deployment.get("model_info")
    raw = info.get("quality") if isinstance(info, Mapping) else None
    quality = _number(raw)
    if quality is None:
        return DEFAULT_QUALITY
    return min(1.0, max(0.0, quality))


def deployment_cost(deployment: Deployment) -> float | None:
    """Price of one input plus one output token, or ``None`` when the config does not say."""
    for section in ("model_info", "litellm_params"):
        values = deployment.get(section)
        if not isinstance(values, Mapping):
            continue
        prices = [_number(values.get(key)) for key in _PRICE_KEYS]
        if any(p is not None for p in prices):
            return sum(max(0.0, p) for p in prices if p is not None)
    return None


def score_deployments(
    candidates: Sequence[Deployment], quality_weight: float
) -> tuple[Scored, ...]:
    """The candidates scored, best first (ties broken by deployment id)."""
    costs = [deployment_cost(d) for d in candidates]
    known = [c for c in costs if c is not None]
    dearest = max(known, default=0.0)
    scored = []
    for deployment, cost in zip(candidates, costs, strict=True):
        normalized = (cost / dearest if dearest > 0 else 0.0) if cost is not None else 1.0
        quality = deployment_quality(deployment)
        score = quality_weight * quality - (1.0 - quality_weight) * normalized
        scored.append(Scored(deployment, deployment_id(deployment), quality, cost, score))
    return tuple(sorted(scored, key=lambda s: (-s.score, s.deployment_id)))


class CostAwareStrategy:
    def __init__(self, quality_weight: float = 0.5) -> None:
        if not 0.0 <= quality_weight <= 1.0:
            raise ConfigError(
                [("quality_weight", f"must be between 0 and 1, got {quality_weight}")]
            )
        self.quality_weight = quality_weight

    @property
    def name(self) -> str:
        return "cost-aware"

    async def choose(self, selection: Selection) -> Choice:
        return Choice(score_deployments(selection.candidates, self.quality_weight)[0].deployment)


def _check_deployments(model_list: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    problems = []
    for index, deployment in enumerate(model_list):
        for section in ("model_info", "litellm_params"):
            values = deployment.get(section)
            if not isinstance(values, Mapping):
                continue
            keys = (*_PRICE_KEYS, "quality") if section == "model_info" else _PRICE_KEYS
            for key in keys:
                value = values.get(key)
                number = _number(value)
                bad = value is not None and (number is None or number < 0)
                if key == "quality" and number is not None and number > 1:
                    bad = True
                if bad:
                    bounds = "between 0 and 1" if key == "quality" else "a number >= 0"
                    problems.append(
                        (f"model_list[{index}].{section}.{key}", f"must be {bounds}, got {value!r}")
                    )
    return problems


def cost_aware_factory(options: Mapping[str, Any], ctx: StrategyContext) -> CostAwareStrategy:
    reader = OptionReader(options, ctx.options_path)
    quality_weight = reader.number("quality_weight", 0.5, low=0.0, high=1.0)
    reader.problems.extend(_check_deployments(ctx.router.registry().all()))
    reader.finish()
    return CostAwareStrategy(quality_weight)
