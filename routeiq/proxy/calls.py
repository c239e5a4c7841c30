"""The two call paths of an API request, after it was authorized and validated.

Upstream failure semantics, in one sentence: a request makes at most ``1 + num_retries``
upstream attempts per model group (fast path and litellm path together: a failed fast attempt
counts, and litellm only gets the attempts that are left), all within one deadline, the
operator's timeout, which a client's ``timeout`` may only shorten; an upstream 4xx is not
retried; when a group's attempts are used up, ``router_settings.fallbacks`` groups are tried
the same way; a client that disconnects cancels the upstream call (``routeiq.proxy.limits``);
an invalid 200 body is a 502; bad ``usage`` numbers are ignored for metrics.

``call_upstream`` records the routing decision (headers, span,
``gateway_routing_decisions_total``) and counts tokens.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from starlette.responses import JSONResponse, Response

from routeiq.config.model import GatewayConfig
from routeiq.observability.tracing import RequestSpan, current_request_span
from routeiq.proxy.coarse_timers import deadline
from routeiq.proxy.errors import ApiError, map_attempt_failure, map_upstream_error
from routeiq.proxy.passthrough import AttemptFailed, Passthrough, request_timeout_s
from routeiq.proxy.streaming import DisconnectAwareStream, count_stream_usage, litellm_sse
from routeiq.routing.decisions import recording_decisions

if TYPE_CHECKING:
    from routeiq.assembly.gateway import Gateway
    from routeiq.routing.runtime import Runtime

__all__ = ["call_upstream", "configured_retries", "count_tokens", "fallback_groups"]

log = logging.getLogger(__name__)
# litellm's Router retries twice unless told otherwise.
LITELLM_DEFAULT_RETRIES = 2
# A token count above this is not a count (and would wreck a counter for good).
_MAX_TOKENS = 10**12


async def call_upstream(
    gateway: Gateway,
    runtime: Runtime,
    method: Callable[..., Awaitable[Any]],
    kwargs: dict[str, Any],
    upstream_path: str,
) -> Response:
    deadline_s = _deadline_s(runtime.config, kwargs)
    call = _Call(gateway, runtime, method, upstream_path, time.monotonic() + deadline_s)
    with recording_decisions() as recorder:
        try:
            with deadline(deadline_s):
                response = await call.group(kwargs, fallbacks=True)
        except TimeoutError:
            raise ApiError(
                504,
                f"the upstream model did not answer within the request's {deadline_s:g}s deadline",
                code="upstream_timeout",
            ) from None
    decision = recorder.last
    if decision is not None:
        response.headers["x-routeiq-deployment"] = decision.deployment_id
        response.headers["x-routeiq-strategy"] = decision.strategy
        response.headers["x-routeiq-arm"] = decision.arm
        current_request_span().set_routing(
            strategy=decision.strategy, arm=decision.arm, deployment=decision.deployment_id
        )
        strategy, arm = decision.strategy, decision.arm
    else:
        strategy, arm = (
            runtime.config.router_settings.get("routing_strategy") or "simple-shuffle",
            "none",
        )
        deployment = response.headers.get("x-routeiq-deployment")
        if deployment:
            current_request_span().set_routing(strategy=strategy, arm=arm, deployment=deployment)
    if gateway.metrics is not None and response.status_code < 400:
        metrics = gateway.metrics
        metrics.child(metrics.gateway_routing_decisions_total, strategy, arm).inc()
    return response


def _deadline_s(config: GatewayConfig, kwargs: Mapping[str, Any]) -> float:
    """The operator's timeout, or the client's ``timeout`` when that is shorter."""
    deadline = request_timeout_s(config)
    asked = kwargs.get("timeout")
    if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked > 0:
        deadline = min(deadline, float(asked))
    return deadline


def configured_retries(config: GatewayConfig, kwargs: Mapping[str, Any]) -> int:
    """``num_retries`` of the request (from ``litellm_settings``), else of the Router."""
    for value in (kwargs.get("num_retries"), config.router_settings.get("num_retries")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return LITELLM_DEFAULT_RETRIES


def fallback_groups(config: GatewayConfig, model: str) -> list[str]:
    """The model groups ``router_settings`` names as fallbacks for ``model``, in order."""
    groups: list[str] = []
    for entry in config.router_settings.get("fallbacks") or ():
        if isinstance(entry, Mapping) and model in entry:
            groups.extend(str(g) for g in entry[model] or ())
    for group in config.router_settings.get("default_fallbacks") or ():
        if str(group) != model:
            groups.append(str(group))
    return list(dict.fromkeys(groups))


class _Call:
    """One request's upstream attempts: the fast path first, litellm for what is left."""

    def __init__(
        self,
        gateway: Gateway,
        runtime: Runtime,
        method: Callable[..., Awaitable[Any]],
        upstream_path: str,
        deadline: float,
    ) -> None:
        self.gateway, self.runtime, self.method = gateway, runtime, method
        self.upstream_path, self.deadline = upstream_path, deadline
        self.passthrough = gateway.components.passthrough if runtime.fast_path else None

    def remaining_s(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    async def group(self, kwargs: dict[str, Any], *, fallbacks: bool) -> Response:
        config = self.runtime.config
        budget = 1 + configured_retries(config, kwargs)
        failed: list[str] = []
        failure: AttemptFailed | None = None
        while budget > 0 and self.passthrough is not None:
            picked = await self._pick(kwargs, failed)
            if picked is None:
                break
            deployment, target = picked
            budget -= 1
            try:
                return await self._forward(deployment, target, kwargs)
            except AttemptFailed as exc:
                failure = exc
            if not failure.retryable:
                raise map_attempt_failure(failure, self.gateway.events.redactor)
            failed.append(target.deployment_id)
            self._record_failure(target.deployment_id, failure)
            retry_after = config.router_settings.get("retry_after")
            if budget > 0 and isinstance(retry_after, (int, float)) and retry_after > 0:
                await anyio.sleep(float(retry_after))
        if failure is None or budget > 0:
            # litellm's call path, with the attempts left and the deadline's remaining time.
            call_kwargs = {**kwargs, "num_retries": budget - 1, "timeout": self.remaining_s()}
            if not fallbacks:
                call_kwargs["disable_fallbacks"] = True
            return await _litellm_path(self.gateway, self.method, call_kwargs)
        if fallbacks:
            for group in fallback_groups(config, kwargs["model"]):
                try:
                    return await self.group({**kwargs, "model": group}, fallbacks=False)
                except ApiError as exc:
                    if exc.status < 500 and exc.status != 429:
                        raise
        raise map_attempt_failure(failure, self.gateway.events.redactor)

    def _record_failure(self, deployment_id: str, failure: AttemptFailed) -> None:
        """Count the failure against the deployment in the Router, which cools it down past
        ``allowed_fails`` (as litellm's own call path does)."""
        health = getattr(self.runtime.router, "health", None)
        if not deployment_id or health is None:
            return
        try:
            health().record_failure(deployment_id, failure, failure.status_code)
        except Exception:  # bookkeeping only: the request's outcome does not depend on it
            log.warning("could not record a failure of deployment %s", deployment_id[:12])

    async def _pick(
        self, kwargs: Mapping[str, Any], failed: list[str]
    ) -> tuple[Mapping[str, Any], Any] | None:
        """The Router's pick for a fast attempt (avoiding deployments that failed this request,
        when there are others), or ``None`` to let litellm take over."""
        router, picker = self.runtime.router, self.runtime.picker
        model = kwargs["model"]
        messages, input = kwargs.get("messages"), kwargs.get("input")
        for excluded in ([*dict.fromkeys(failed)], []) if failed else ([],):
            request = dict(kwargs)
            if picker is not None and picker.covers(model):
                try:
                    deployment = await picker.pick(
                        model, request, excluded=excluded, messages=messages, input=input
                    )
                except Exception:  # a strategy that fails to choose: as a failed select below
                    continue
                if deployment is None:
                    continue
                assert self.passthrough is not None
                target = self.passthrough.target_of(deployment)
                return None if target is None else (deployment, target)
            if excluded:
                request["_excluded_deployment_ids"] = excluded
            try:
                deployment = await router.select(model, request, messages=messages, input=input)
            except Exception:  # no pick (cooldown, no capacity, all excluded)
                continue
            if not isinstance(deployment, Mapping):
                continue  # nothing left once the failed ones are excluded
            target = Passthrough.target(deployment)
            return None if target is None else (deployment, target)
        return None

    async def _forward(
        self, deployment: Mapping[str, Any], target: Any, kwargs: Mapping[str, Any]
    ) -> Response:
        assert self.passthrough is not None
        span = current_request_span()
        span.set_provider(str(deployment["litellm_params"]["model"]))
        relay = await self.passthrough.forward(
            target, self.upstream_path, kwargs, timeout_s=self.remaining_s(), within_deadline=True
        )
        gateway = self.gateway
        headers = {"x-routeiq-deployment": target.deployment_id}
        span.set_response_model(target.model)
        if relay.chunks is None:
            if relay.usage is not None:
                count_tokens(gateway, relay.usage, span)
            return Response(relay.body, 200, headers=headers, media_type=relay.content_type)
        headers["cache-control"] = "no-cache"
        return DisconnectAwareStream(
            count_stream_usage(relay.chunks, lambda usage: count_tokens(gateway, usage, span)),
            headers=headers,
            media_type="text/event-stream",
        )


async def _litellm_path(
    gateway: Gateway, method: Callable[..., Awaitable[Any]], kwargs: dict[str, Any]
) -> Response:
    redact = gateway.events.redactor
    span = current_request_span()
    try:
        result = await method(**kwargs)
    except Exception as exc:
        raise map_upstream_error(exc, redact) from None
    hidden = getattr(result, "_hidden_params", None)
    hidden = hidden if isinstance(hidden, Mapping) else {}
    if isinstance(hidden.get("custom_llm_provider"), str):
        span.set_provider(hidden["custom_llm_provider"])
    # litellm reports the deployment it called as the hidden "model_id".
    headers = {"x-routeiq-deployment": str(hidden["model_id"])} if hidden.get("model_id") else {}
    if kwargs.get("stream"):
        return DisconnectAwareStream(
            litellm_sse(result, redact, lambda usage: count_tokens(gateway, usage, span)),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **headers},
        )
    span.set_response_model(getattr(result, "model", None))
    usage = getattr(result, "usage", None)
    if usage is not None:
        count_tokens(gateway, usage, span)
    return JSONResponse(result.model_dump(mode="json", exclude_none=True), headers=headers)


def count_tokens(gateway: Gateway, usage: Any, span: RequestSpan | None = None) -> None:
    """Count an upstream's ``usage``; a value that is not a plausible token count (negative,
    not a number, infinite, an object…) is ignored, never fatal."""
    if type(usage) is dict or isinstance(usage, Mapping):  # a parsed body's: skip the ABC check
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    else:
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
    prompt, completion = _token_count(prompt), _token_count(completion)
    if span is not None:
        span.set_tokens(input_tokens=prompt, output_tokens=completion)
    if gateway.metrics is None:
        return
    metrics = gateway.metrics
    if prompt:
        metrics.child(metrics.gateway_tokens_total, "input").inc(prompt)
    if completion:
        metrics.child(metrics.gateway_tokens_total, "output").inc(completion)


def _token_count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if 0 <= value <= _MAX_TOKENS else None
