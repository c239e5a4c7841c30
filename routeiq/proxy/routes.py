"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models``, served through this app instance's ``litellm.Router``.

Guarantees: a malformed or invalid request is a 4xx with OpenAI's error body, never a 500;
keys are compared in constant time and never echoed; clients cannot set provider parameters
(``api_base``, ``api_key``, mock options…) because only OpenAI's request fields are forwarded;
metric labels are bounded (a model name the config does not know is counted as ``other``).
Each request uses one ``Runtime`` snapshot (config + Router) from start to end.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from routeiq.http.auth import bearer_token, key_matches
from routeiq.observability.tracing import (
    OPERATION_OF_ROUTE,
    RequestSpan,
    request_span,
)
from routeiq.proxy.calls import call_upstream
from routeiq.proxy.errors import ApiError
from routeiq.proxy.limits import read_json_body
from routeiq.proxy.streaming import (
    aclose_quietly,
)

if TYPE_CHECKING:
    from routeiq.app import GatewayApp
    from routeiq.lifecycle.gateway import Gateway
    from routeiq.lifecycle.runtime import Runtime

__all__ = ["CHAT_FIELDS", "COMPLETION_FIELDS", "EMBEDDING_FIELDS", "openai_routes"]

_COMMON = frozenset(
    {"model", "user", "metadata", "stream", "stream_options", "n", "seed", "timeout"}
)
CHAT_FIELDS = _COMMON | {
    "messages", "temperature", "top_p", "stop", "max_tokens", "max_completion_tokens",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions",
    "function_call", "reasoning_effort", "modalities", "audio", "prediction", "store",
    "service_tier", "web_search_options",
}  # fmt: skip
COMPLETION_FIELDS = _COMMON | {
    "prompt", "temperature", "top_p", "stop", "max_tokens", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "echo", "best_of", "suffix",
}  # fmt: skip
EMBEDDING_FIELDS = frozenset({"model", "input", "user", "encoding_format", "dimensions"})

Handler = Callable[[Request], Awaitable[Response]]
Endpoint = Callable[["Gateway", "Runtime", dict[str, Any]], Awaitable[Response]]


def openai_routes(holder: GatewayApp) -> list[Route]:
    api = _Api(holder)
    return [
        Route(
            "/v1/chat/completions", api.endpoint("/v1/chat/completions", api.chat), methods=["POST"]
        ),
        Route(
            "/v1/completions", api.endpoint("/v1/completions", api.completions), methods=["POST"]
        ),
        Route("/v1/embeddings", api.endpoint("/v1/embeddings", api.embeddings), methods=["POST"]),
        Route("/v1/models", api.endpoint("/v1/models", api.models), methods=["GET"]),
    ]


class _Api:
    def __init__(self, holder: GatewayApp) -> None:
        self._holder = holder

    def endpoint(self, route: str, handler: Endpoint) -> Handler:
        operation = OPERATION_OF_ROUTE.get(route)

        async def serve(request: Request) -> Response:
            started = time.perf_counter()
            gateway = self._holder.gateway
            metrics = None if gateway is None else gateway.metrics
            provider = None if gateway is None or operation is None else gateway.tracer_provider
            with request_span(provider, operation=operation or "", headers=request.headers) as span:
                if metrics is not None:
                    metrics["gateway_inflight_requests"].inc()
                model_label = "other"
                response: Response
                try:
                    runtime = None if gateway is None else gateway.runtime
                    if gateway is None or runtime is None:
                        raise ApiError(503, "the gateway is not serving yet", code="not_ready")
                    _authorize(request, runtime)
                    body = {} if request.method == "GET" else await _json_body(request, runtime)
                    model = body.get("model")
                    if isinstance(model, str):
                        span.set_request_model(model)
                        if model in runtime.known_models:
                            model_label = model
                    response = await handler(gateway, runtime, body)
                except ApiError as exc:
                    span.set_status_code(exc.status, exc.message)
                    response = exc.response()
                except BaseException as exc:  # cancelled (the client left): counted, re-raised
                    if metrics is not None:
                        status = 500 if isinstance(exc, Exception) else 499
                        _count(metrics, route, model_label, status, started)
                    raise
                else:
                    span.set_status_code(response.status_code)
                if isinstance(response, StreamingResponse):
                    span.end_later()
                    _count_stream(response, metrics, route, model_label, started, span)
                elif metrics is not None:
                    _count(metrics, route, model_label, response.status_code, started)
            return response

        return serve

    # --- endpoints ---------------------------------------------------------------------------

    async def chat(self, gateway: Gateway, runtime: Runtime, body: dict[str, Any]) -> Response:
        kwargs = _call_kwargs(runtime, body, CHAT_FIELDS)
        messages = kwargs.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) for m in messages)
        ):
            raise ApiError(
                400, "'messages' must be a non-empty array of message objects", param="messages"
            )
        for index, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ApiError(
                    400, f"messages[{index}].role is required", param=f"messages[{index}].role"
                )
        return await call_upstream(
            gateway, runtime, runtime.router.acompletion, kwargs, "/chat/completions"
        )

    async def completions(
        self, gateway: Gateway, runtime: Runtime, body: dict[str, Any]
    ) -> Response:
        kwargs = _call_kwargs(runtime, body, COMPLETION_FIELDS)
        prompt = kwargs.get("prompt")
        if not isinstance(prompt, (str, list)) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string or array", param="prompt")
        return await call_upstream(
            gateway, runtime, runtime.router.atext_completion, kwargs, "/completions"
        )

    async def embeddings(
        self, gateway: Gateway, runtime: Runtime, body: dict[str, Any]
    ) -> Response:
        kwargs = _call_kwargs(runtime, body, EMBEDDING_FIELDS)
        value = kwargs.get("input")
        if not isinstance(value, (str, list)) or not value:
            raise ApiError(400, "'input' must be a non-empty string or array", param="input")
        return await call_upstream(
            gateway, runtime, runtime.router.aembedding, kwargs, "/embeddings"
        )

    async def models(self, gateway: Gateway, runtime: Runtime, body: dict[str, Any]) -> Response:
        created = int(gateway.events.events[0].wall_time) if len(gateway.events) else 0
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "routeiq"}
            for name in runtime.config.model_names
        ]
        return JSONResponse({"object": "list", "data": data})


# --- request checks ---------------------------------------------------------------------------


def _authorize(request: Request, runtime: Runtime) -> None:
    key = runtime.config.master_key
    if key is None:
        return
    token = bearer_token(request.headers)
    if token is None:
        raise ApiError(
            401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
        )
    if not key_matches(token, key):
        raise ApiError(401, "incorrect API key provided", code="invalid_api_key")


async def _json_body(request: Request, runtime: Runtime) -> dict[str, Any]:
    return await read_json_body(request, runtime.config.routeiq.limits)


def _call_kwargs(runtime: Runtime, body: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            400, f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string", param="model")
    if model not in runtime.known_models:
        raise ApiError(
            404, f"the model '{model}' does not exist", param="model", code="model_not_found"
        )
    for name, kind, label in (("stream", bool, "a boolean"), ("user", str, "a string")):
        if name in body and not isinstance(body[name], kind):
            raise ApiError(400, f"'{name}' must be {label}", param=name)
    if "metadata" in body and not isinstance(body["metadata"], dict):
        raise ApiError(400, "'metadata' must be an object", param="metadata")
    kwargs = dict(body)
    settings = runtime.config.litellm_settings
    if "drop_params" in settings:
        kwargs.setdefault("drop_params", settings["drop_params"])
    if "request_timeout" in settings:
        kwargs.setdefault("timeout", settings["request_timeout"])
    if "num_retries" in settings:
        kwargs.setdefault("num_retries", settings["num_retries"])
    return kwargs


# --- metrics ----------------------------------------------------------------------------------


def _count(metrics: Any, route: str, model: str, status: int, started: float) -> None:
    metrics["gateway_inflight_requests"].dec()
    metrics["gateway_requests_total"].labels(
        route=route, model=model, status_class=f"{status // 100}xx"
    ).inc()
    metrics["gateway_request_duration_seconds"].labels(route=route).observe(
        time.perf_counter() - started
    )


def _count_stream(
    response: StreamingResponse,
    metrics: Any,
    route: str,
    model: str,
    started: float,
    span: RequestSpan,
) -> None:
    source = response.body_iterator

    async def counted() -> AsyncIterator[Any]:
        first = True
        try:
            async for chunk in source:
                if first and metrics is not None:
                    first = False
                    metrics["gateway_time_to_first_token_seconds"].observe(
                        time.perf_counter() - started
                    )
                yield chunk
        finally:
            if metrics is not None:
                _count(metrics, route, model, response.status_code, started)
            span.end()
            await aclose_quietly(source)

    response.body_iterator = counted()
