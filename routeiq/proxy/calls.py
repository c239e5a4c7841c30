"""The two call paths of an API request, after it was authorized and validated.

``call_upstream`` first tries the fast path (the Router picks a deployment, RouteIQ forwards the
bytes, see ``routeiq.proxy.passthrough``), then litellm's own call path, records the routing
decision (headers, span, ``gateway_routing_decisions_total``) and counts tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from routeiq.observability.tracing import RequestSpan, current_request_span
from routeiq.proxy.errors import map_upstream_error
from routeiq.proxy.passthrough import Passthrough
from routeiq.proxy.streaming import DisconnectAwareStream, count_stream_usage, litellm_sse
from routeiq.routing.decisions import recording_decisions

if TYPE_CHECKING:
    from routeiq.lifecycle.gateway import Gateway
    from routeiq.lifecycle.runtime import Runtime

__all__ = ["call_upstream", "count_tokens"]


async def call_upstream(
    gateway: Gateway,
    runtime: Runtime,
    method: Callable[..., Awaitable[Any]],
    kwargs: dict[str, Any],
    upstream_path: str,
) -> Response:
    with recording_decisions() as recorder:
        response = await _fast_path(gateway, runtime, kwargs, upstream_path)
        if response is None:
            response = await _litellm_path(gateway, method, kwargs)
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
        gateway.metrics["gateway_routing_decisions_total"].labels(strategy=strategy, arm=arm).inc()
    return response


async def _fast_path(
    gateway: Gateway, runtime: Runtime, kwargs: dict[str, Any], upstream_path: str
) -> Response | None:
    """Forward through the Router's pick, or ``None`` to use litellm's call path."""
    passthrough: Passthrough | None = gateway.extensions.get("passthrough")
    if passthrough is None or not runtime.fast_path:
        return None
    try:
        deployment = await runtime.router.select(
            kwargs["model"],
            dict(kwargs),
            messages=kwargs.get("messages"),
            input=kwargs.get("input"),
        )
    except Exception:  # no pick (cooldown, no capacity): litellm decides
        return None
    target = Passthrough.target(deployment) if isinstance(deployment, Mapping) else None
    if target is None:
        return None
    span = current_request_span()
    span.set_provider(str(deployment["litellm_params"]["model"]))
    relay = await passthrough.forward(target, upstream_path, kwargs)
    if relay is None:
        return None
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
    if span is not None:
        span.set_usage(usage)
    if gateway.metrics is None:
        return
    tokens = gateway.metrics["gateway_tokens_total"]
    if isinstance(usage, Mapping):
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    else:
        prompt = getattr(usage, "prompt_tokens", None) or 0
        completion = getattr(usage, "completion_tokens", None) or 0
    if prompt:
        tokens.labels(type="input").inc(prompt)
    if completion:
        tokens.labels(type="output").inc(completion)
