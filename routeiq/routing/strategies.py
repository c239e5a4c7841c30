"""What a routing strategy is, and litellm's own strategies in that shape.

A strategy chooses one deployment among the candidates of a model group: the deployments the
Router's own checks left healthy, minus those cooling down on that Router. It is built for one
Router by a factory in a ``StrategyRegistry`` and runs behind that Router's ``RoutingHook``.

litellm's built-in strategies are served here by litellm's own code: ``simple-shuffle`` is a
pure function of the candidates; the others keep traffic state (latency, usage, in-flight
calls) in a selector object that the Router builds, and registers for traffic events, for its
configured ``routing_strategy``. So a stateful built-in can only run on a Router configured
with it, at most one per Router; ``StrategyRegistry.install`` configures the Router that way.

Importing this module does not import litellm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from routeiq.errors import ConfigError, GatewayError
from routeiq.routing.decisions import NO_ARM

if TYPE_CHECKING:
    from routeiq.routing.registry import StrategyRegistry

__all__ = [
    "LITELLM_STRATEGIES",
    "SELECTOR_ATTRIBUTES",
    "Choice",
    "Deployment",
    "LitellmStrategy",
    "NativeStrategy",
    "NeedsNativeStrategy",
    "OptionReader",
    "Selection",
    "Strategy",
    "StrategyContext",
    "StrategyFactory",
    "deployment_id",
]

Deployment = Mapping[str, Any]

# This litellm version's accepted ``routing_strategy`` values, less ``lar1`` (a strategy that
# reads LAR-1 metadata, not a way to spread load across deployments).
LITELLM_STRATEGIES: tuple[str, ...] = (
    "simple-shuffle",
    "least-busy",
    "usage-based-routing",
    "usage-based-routing-v2",
    "latency-based-routing",
    "cost-based-routing",
)
# The Router attribute holding the selector of its configured strategy (litellm's
# ``SELECTOR_ATTRIBUTES``; a test checks they agree).
SELECTOR_ATTRIBUTES: Mapping[str, str] = {
    "least-busy": "leastbusy_logger",
    "usage-based-routing": "lowesttpm_logger",
    "usage-based-routing-v2": "lowesttpm_logger_v2",
    "latency-based-routing": "lowestlatency_logger",
    "cost-based-routing": "lowestcost_logger",
}


@dataclass(frozen=True, slots=True)
class Selection:
    """One pick to make: a model group's candidates (never empty) and the request's kwargs."""

    model_group: str
    candidates: tuple[Deployment, ...]
    request: Mapping[str, Any]
    messages: Sequence[Mapping[str, Any]] | None = None
    input: Any = None


@dataclass(frozen=True, slots=True)
class Choice:
    deployment: Deployment
    arm: str = NO_ARM


class Strategy(Protocol):
    @property
    def name(self) -> str: ...

    async def choose(self, selection: Selection) -> Choice: ...


@dataclass(frozen=True, slots=True)
class NativeStrategy:
    """A litellm strategy the Router itself must be configured with, and where the config asks."""

    name: str
    args: Mapping[str, Any]
    path: str


@runtime_checkable
class NeedsNativeStrategy(Protocol):
    def native_strategies(self) -> tuple[NativeStrategy, ...]: ...


@dataclass(frozen=True, slots=True)
class StrategyContext:
    """What a factory gets beside its options: the Router, the registry (for strategies made of
    strategies) and the config path of the ``{strategy, options}`` block being built."""

    router: Any
    registry: StrategyRegistry
    path: str

    @property
    def name_path(self) -> str:
        return f"{self.path}.strategy"

    @property
    def options_path(self) -> str:
        return f"{self.path}.options"


StrategyFactory = Callable[[Mapping[str, Any], StrategyContext], Strategy]


def deployment_id(deployment: Deployment) -> str:
    info = deployment.get("model_info")
    value = info.get("id") if isinstance(info, Mapping) else None
    if value is None:
        raise GatewayError(f"deployment of {deployment.get('model_name')!r} has no model_info.id")
    return str(value)


class OptionReader:
    """Reads a strategy's options, collecting every problem with its path; ``finish`` raises
    one ``ConfigError`` naming them all, and rejects keys nobody read (typos)."""

    def __init__(self, options: object, path: str) -> None:
        self.path = path
        self.problems: list[tuple[str, str]] = []
        self._read: set[str] = set()
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            self.problems.append((path, f"must be a mapping, got {type(options).__name__}"))
            options = {}
        self.options: Mapping[str, Any] = options

    def raw(self, key: str) -> Any:
        self._read.add(key)
        return self.options.get(key)

    def number(
        self,
        key: str,
        default: float,
        *,
        low: float | None = None,
        high: float | None = None,
        low_exclusive: bool = False,
    ) -> float:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problems.append((f"{self.path}.{key}", f"must be a number, got {value!r}"))
            return default
        too_low = low is not None and (value <= low if low_exclusive else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if low_exclusive else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            bounds = " and ".join(b for b in (lo, hi) if b)
            self.problems.append((f"{self.path}.{key}", f"must be {bounds}, got {value!r}"))
            return default
        return float(value)

    def text(self, key: str, default: str) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problems.append((f"{self.path}.{key}", f"must be a string, got {value!r}"))
            return default
        return value

    def finish(self) -> None:
        for key in sorted(set(self.options) - self._read, key=str):
            known = ", ".join(sorted(self._read)) or "none"
            self.problems.append((f"{self.path}.{key}", f"unknown option (known: {known})"))
        if self.problems:
            raise ConfigError(self.problems)


class LitellmStrategy:
    """One of litellm's built-in strategies, run by litellm's own code for one Router."""

    def __init__(self, name: str, router: Any, args: Mapping[str, Any], path: str) -> None:
        if name not in LITELLM_STRATEGIES:
            raise ConfigError([(path, f"{name!r} is not a litellm routing strategy")])
        if name == "simple-shuffle" and args:
            raise ConfigError([(f"{path}.{k}", "simple-shuffle takes no options") for k in args])
        self._name = name
        self._router = router
        self._native = NativeStrategy(name, dict(args), path)

    @property
    def name(self) -> str:
        return self._name

    def native_strategies(self) -> tuple[NativeStrategy, ...]:
        return () if self._name == "simple-shuffle" else (self._native,)

    async def choose(self, selection: Selection) -> Choice:
        candidates = [dict(c) for c in selection.candidates]
        if self._name == "simple-shuffle":
            from litellm.router_strategy.simple_shuffle import simple_shuffle

            picked: Any = simple_shuffle(
                self._resolve_alias, candidates, selection.model_group, selection.request
            )
        else:
            from litellm.router_rust.steps.selection import pick_async
            from litellm.router_strategy.least_busy import pick_reserves

            selector = getattr(self._router, SELECTOR_ATTRIBUTES[self._name], None)
            if selector is None:
                raise GatewayError(
                    f"the Router is no longer configured with routing_strategy {self._name!r}; "
                    "install the RouteIQ strategy again after changing it"
                )
            picked = await pick_async(
                self._name,
                selector,
                selection.model_group,
                candidates,
                selection.messages,
                selection.input,
                dict(selection.request),
                # As the Router's own pick: a call's pick holds a least-busy reservation.
                reserve=pick_reserves(default=True) and bool(selection.request),
            )
        if not isinstance(picked, Mapping):
            from litellm.types.router import RouterRateLimitErrorBasic

            raise RouterRateLimitErrorBasic(model=selection.model_group)
        return Choice(picked)

    def _resolve_alias(self, model: str) -> str | None:
        resolved = self._router.registry().resolve(model, kind="alias")
        return resolved if isinstance(resolved, str) else None
