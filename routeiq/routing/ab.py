"""``weighted-ab``: split traffic between named arms, each run by its own strategy.

A request is assigned to an arm by a stable hash of its key, so under one config the same user
always lands on the same arm (across requests, workers, processes and restarts), and the share
of keys per arm follows the weights. Arms own consecutive slices of [0, 1) in config order, so
changing weights moves only the keys between an old slice edge and its new place.

The key is, in order: the request's ``user``; its ``metadata.tenant``; its ``x-routeiq-tenant``
header (from ``metadata.headers`` or ``proxy_server_request.headers``); else the request's id
(``metadata.request_id``, else litellm's call or trace id), so a request without identity is
assigned at random, and its retries stay on its arm. ``salt`` makes experiments independent.

Config (under ``routeiq.routing``)::

    strategy: weighted-ab
    options:
      salt: checkout-2025
      arms:
        control:   {strategy: simple-shuffle, weight: 90}
        treatment: {strategy: cost-aware, weight: 10, options: {quality_weight: 0.7}}

Weights are positive and normalized. An arm may not itself be ``weighted-ab``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routeiq.errors import ConfigError
from routeiq.routing.decisions import NO_ARM
from routeiq.routing.strategies import (
    Choice,
    NativeStrategy,
    NeedsNativeStrategy,
    OptionReader,
    Selection,
    Strategy,
    StrategyContext,
)

__all__ = [
    "TENANT_HEADER",
    "Arm",
    "ArmWeight",
    "WeightedABStrategy",
    "assign_arm",
    "hash_point",
    "request_key",
    "weighted_ab_factory",
]

TENANT_HEADER = "x-routeiq-tenant"
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True, slots=True)
class ArmWeight:
    name: str
    weight: float


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    weight: float
    strategy: Strategy


def hash_point(key: str, salt: str = "") -> float:
    """``key`` mapped uniformly into [0, 1) by blake2b; the same key gives the same point."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_arm(key: str, arms: Sequence[ArmWeight] | Mapping[str, float], *, salt: str = "") -> str:
    """The arm ``key`` belongs to: arms own consecutive slices of [0, 1) sized by weight."""
    pairs = list(arms.items()) if isinstance(arms, Mapping) else [(a.name, a.weight) for a in arms]
    if not pairs:
        raise ConfigError([("arms", "at least one arm is required")])
    for name, weight in pairs:
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
            raise ConfigError([(f"arms.{name}.weight", f"must be a number > 0, got {weight!r}")])
    total = math.fsum(w for _, w in pairs)
    point = hash_point(key, salt) * total
    edge = 0.0
    for name, weight in pairs:
        edge += weight
        if point < edge:
            return name
    return pairs[-1][0]


def _header(headers: object, name: str) -> str | None:
    if not isinstance(headers, Mapping):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str) and value:
            return value
    return None


def request_key(request: Mapping[str, Any]) -> str:
    """What a request is assigned by: its user, else its tenant, else its request id."""
    user = request.get("user")
    if isinstance(user, str) and user:
        return f"user:{user}"
    buckets = [b for b in (request.get("metadata"), request.get("litellm_metadata")) if b]
    buckets = [b for b in buckets if isinstance(b, Mapping)]
    for bucket in buckets:
        tenant = bucket.get("tenant")
        if isinstance(tenant, str) and tenant:
            return f"tenant:{tenant}"
    proxy_request = request.get("proxy_server_request")
    header_sources = [b.get("headers") for b in buckets]
    if isinstance(proxy_request, Mapping):
        header_sources.append(proxy_request.get("headers"))
    for headers in header_sources:
        if tenant := _header(headers, TENANT_HEADER):
            return f"tenant:{tenant}"
    ids = [b.get("request_id") for b in buckets]
    ids += [request.get("litellm_call_id"), request.get("litellm_trace_id")]
    for request_id in ids:
        if isinstance(request_id, str) and request_id:
            return f"request:{request_id}"
    return "anonymous"


class WeightedABStrategy:
    def __init__(self, arms: Sequence[Arm], *, salt: str = "") -> None:
        names = [a.name for a in arms]
        problems = [("arms", "at least one arm is required")] if not arms else []
        problems += [
            (f"arms.{n}", "appears twice") for n in sorted({n for n in names if names.count(n) > 1})
        ]
        problems += [(f"arms.{a.name}.weight", "must be > 0") for a in arms if not a.weight > 0]
        if problems:
            raise ConfigError(problems)
        total = math.fsum(a.weight for a in arms)
        self.arms = tuple(Arm(a.name, a.weight / total, a.strategy) for a in arms)
        self.salt = salt
        self._weights = tuple(ArmWeight(a.name, a.weight) for a in self.arms)
        self._by_name = {a.name: a for a in self.arms}

    @property
    def name(self) -> str:
        return "weighted-ab"

    def assign(self, request: Mapping[str, Any]) -> str:
        return assign_arm(request_key(request), self._weights, salt=self.salt)

    async def choose(self, selection: Selection) -> Choice:
        arm = self._by_name[self.assign(selection.request)]
        choice = await arm.strategy.choose(selection)
        return Choice(choice.deployment, arm.name)

    def native_strategies(self) -> tuple[NativeStrategy, ...]:
        return tuple(
            native
            for arm in self.arms
            if isinstance(arm.strategy, NeedsNativeStrategy)
            for native in arm.strategy.native_strategies()
        )


def _arm_entries(raw: object, path: str, problems: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    if isinstance(raw, Mapping):
        return [(str(name), spec) for name, spec in raw.items()]
    if isinstance(raw, list | tuple):
        entries = []
        for index, spec in enumerate(raw):
            name = spec.get("name") if isinstance(spec, Mapping) else None
            if not isinstance(name, str):
                problems.append((f"{path}[{index}].name", "each arm in a list needs a name"))
                continue
            entries.append((name, spec))
        return entries
    if raw is not None:
        problems.append((path, f"must be a mapping of arm name to arm, got {type(raw).__name__}"))
    return []


def weighted_ab_factory(options: Mapping[str, Any], ctx: StrategyContext) -> WeightedABStrategy:
    reader = OptionReader(options, ctx.options_path)
    salt = reader.text("salt", "")
    arms_path = f"{ctx.options_path}.arms"
    entries = _arm_entries(reader.raw("arms"), arms_path, reader.problems)
    if not entries:
        reader.problems.append((arms_path, "at least one arm is required"))
    arms: list[Arm] = []
    seen: set[str] = set()
    for name, spec in entries:
        path = f"{arms_path}.{name}"
        if name in seen:
            reader.problems.append((path, "appears twice"))
            continue
        seen.add(name)
        if not _ARM_NAME.match(name) or name == NO_ARM:
            reader.problems.append(
                (path, f"arm names are 1-63 letters, digits, '_', '.', '-' and not {NO_ARM!r}")
            )
        if not isinstance(spec, Mapping):
            reader.problems.append((path, f"must be a mapping, got {type(spec).__name__}"))
            continue
        arm = OptionReader(spec, path)
        arm.raw("name")
        weight = arm.number("weight", 0.0, low=0.0, low_exclusive=True)
        if spec.get("weight") is None:
            arm.problems.append((f"{path}.weight", "is required (a number > 0)"))
        strategy_name = arm.raw("strategy")
        arm_options = arm.raw("options")
        strategy = None
        if not isinstance(strategy_name, str):
            arm.problems.append((f"{path}.strategy", "is required (a strategy name)"))
        elif strategy_name == "weighted-ab":
            arm.problems.append((f"{path}.strategy", "an arm cannot itself be weighted-ab"))
        else:
            try:
                strategy = ctx.registry.create(
                    strategy_name, arm_options or {}, ctx.router, path=path
                )
            except ConfigError as exc:
                arm.problems.extend(exc.problems)
        try:
            arm.finish()
        except ConfigError as exc:
            reader.problems.extend(exc.problems)
            continue
        if strategy is not None:
            arms.append(Arm(name, weight, strategy))
    reader.finish()
    return WeightedABStrategy(arms, salt=salt)
