"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models`` and ``/v1/models/{model}``, served through this app instance's ``litellm.Router``.

Guarantees: a malformed or invalid request is a 4xx with OpenAI's error body, never a 500;
the body is parsed and validated (``routeiq.proxy.schemas``) once, before any upstream work;
an unexpected exception is a 500 naming the request id, logged once with its traceback; every
request is accounted exactly once (in-flight gauge, ``gateway_requests_total``, latency, span
end) whatever happens, a stream when its response ends even if its body never started;
keys are compared in constant time and never echoed; clients cannot set provider parameters
(``api_base``, ``api_key``, mock options…) because only OpenAI's request fields are forwarded;
metric labels are bounded (a model name the config does not know is counted as ``other``).
Each request uses one ``Runtime`` snapshot (config + Router) from start to end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from routeiq.http.auth import bearer_token, key_matches
from routeiq.http.request_id import internal_error, request_id
from routeiq.observability.tracing import OPERATION_OF_ROUTE, RequestSpan, request_span
from routeiq.proxy.calls import call_upstream
from routeiq.proxy.errors import ApiError
from routeiq.proxy.limits import read_json_body
from routeiq.proxy.mock import mock_embeddings
from routeiq.proxy.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    validate_request,
)
from routeiq.proxy.streaming import aclose_quietly

if TYPE_CHECKING:
    from routeiq.app import GatewayApp
    from routeiq.assembly.gateway import Gateway
    from routeiq.observability.metrics import GatewayMetrics
    from routeiq.routing.runtime import Runtime

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
Endpoint = Callable[["Gateway", "Runtime", Request, dict[str, Any]], Awaitable[Response]]

# gen_ai.operation.name of each route's span; listing models is no GenAI operation of semconv.
_OPERATIONS = {**OPERATION_OF_ROUTE, "/v1/models": "models", "/v1/models/{model}": "models"}
_SECURITY: list[dict[str, list[str]]] = [{"MasterKey": []}]
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "invalid request (OpenAI error body; ``param`` names the field)"},
    401: {"description": "missing or incorrect master key"},
    404: {"description": "no such model"},
    500: {"description": "a gateway bug; the message names the request id"},
    502: {"description": "the upstream failed"},
    503: {"description": "the gateway is not serving"},
    504: {"description": "the upstream timed out"},
}

log = logging.getLogger("routeiq.proxy")


def openai_routes(app: FastAPI, holder: GatewayApp) -> tuple[list[APIRoute], dict[str, Handler]]:
    """Register the OpenAI API on ``app``; returns the routes to describe in ``/openapi.json``
    and the handlers of the three POST routes by path (see ``routeiq.http.routes.HttpApp``).

    The three POST routes are the hot path: they are served as plain Starlette routes (FastAPI's
    per-request dependency machinery measured ~20 µs more per request here) that read, parse and
    validate the body once, in this module. The ``APIRoute`` twins returned describe them, with
    the request models referenced in the OpenAPI document, but never serve.
    """
    api = _Api(holder)
    described: list[APIRoute] = []
    hot: dict[str, Handler] = {}
    posts: list[tuple[str, Endpoint, type[Any], str]] = [
        ("/v1/chat/completions", api.chat, ChatCompletionRequest, "Create a chat completion"),
        ("/v1/completions", api.completions, CompletionRequest, "Create a text completion"),
        ("/v1/embeddings", api.embeddings, EmbeddingRequest, "Create embeddings"),
    ]
    for path, handler, model, summary in posts:
        serve = api.endpoint(path, handler)
        # First in the router: the hot routes match without trying the others.
        route = Route(path, serve, methods=["POST"])
        app.router.routes.insert(0, route)
        hot[path] = serve
        body_schema = {"$ref": f"#/components/schemas/{model.__name__}"}
        described.append(
            APIRoute(
                path,
                serve,
                methods=["POST"],
                tags=["openai"],
                summary=summary,
                responses={
                    200: {
                        "description": "the upstream's answer (``text/event-stream`` if streaming)",
                        "content": {"application/json": {}, "text/event-stream": {}},
                    },
                    **_ERRORS,
                },
                openapi_extra={
                    "security": _SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": body_schema}},
                    },
                },
            )
        )
    app.add_api_route(
        "/v1/models",
        api.endpoint("/v1/models", api.models),
        methods=["GET"],
        tags=["openai"],
        summary="List the models",
        response_model=ModelList,
        responses={401: _ERRORS[401]},
        openapi_extra={"security": _SECURITY},
    )
    app.add_api_route(
        "/v1/models/{model}",
        api.endpoint("/v1/models/{model}", api.model),
        methods=["GET"],
        tags=["openai"],
        summary="Retrieve a model",
        response_model=ModelCard,
        responses={401: _ERRORS[401], 404: _ERRORS[404]},
        openapi_extra={
            "security": _SECURITY,
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
        },
    )
    return described, hot


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@dataclass(slots=True)
class _Outcome:
    """How a request ended, for its one accounting."""

    model: str = "other"  # a metric label: a model the config knows, else "other"
    status: int = 499  # unless a response is made: the client went away (cancelled)
    deferred: bool = False  # a stream, accounted when its response ends


class _Api:
    def __init__(self, holder: GatewayApp) -> None:
        self._holder = holder

    def endpoint(self, route: str, handler: Endpoint) -> Handler:
        operation = _OPERATIONS[route]

        async def serve(request: Request) -> Response:
            started = time.perf_counter()
            gateway = self._holder.gateway
            metrics = None if gateway is None else gateway.metrics
            provider = None if gateway is None else gateway.tracer_provider
            outcome = _Outcome()
            with request_span(provider, operation=operation, headers=request.headers) as span:
                if metrics is not None:
                    metrics.gateway_inflight_requests.inc()
                try:
                    response = await self._respond(request, route, handler, span, outcome)
                    if isinstance(response, StreamingResponse):
                        span.end_later()
                        response = _AccountedStream(
                            response, metrics, route, outcome.model, started, span
                        )
                        outcome.deferred = True
                finally:
                    if metrics is not None and not outcome.deferred:
                        _count(metrics, route, outcome.model, outcome.status, started)
            return response

        return serve

    async def _respond(
        self, request: Request, route: str, handler: Endpoint, span: RequestSpan, outcome: _Outcome
    ) -> Response:
        """The handler's answer; every failure but cancellation becomes an error response."""
        gateway = self._holder.gateway
        response: Response
        try:
            runtime = None if gateway is None else gateway.runtime
            if gateway is None or runtime is None:
                raise ApiError(503, "the gateway is not serving yet", code="not_ready")
            _authorize(request, runtime)
            body = await _json_body(request, runtime) if request.method == "POST" else {}
            model = body.get("model", request.path_params.get("model"))
            if isinstance(model, str):
                span.set_request_model(model)
                if model in runtime.known_models:
                    outcome.model = model
            response = await handler(gateway, runtime, request, body)
        except ApiError as exc:
            span.set_status_code(exc.status, exc.message)
            response = exc.response()
        except Exception as exc:
            rid = request_id(request.scope)
            log.error("unexpected error in %s (request id %s)", route, rid, exc_info=exc)
            span.record_error(exc)
            response = internal_error(rid).response()
            span.set_status_code(500)
        else:
            span.set_status_code(response.status_code)
        outcome.status = response.status_code
        return response

    # --- endpoints ---------------------------------------------------------------------------

    async def chat(
        self, gateway: Gateway, runtime: Runtime, request: Request, body: dict[str, Any]
    ) -> Response:
        kwargs = _call_kwargs(runtime, body, CHAT_FIELDS, ChatCompletionRequest)
        return await call_upstream(
            gateway, runtime, runtime.router.acompletion, kwargs, "/chat/completions"
        )

    async def completions(
        self, gateway: Gateway, runtime: Runtime, request: Request, body: dict[str, Any]
    ) -> Response:
        kwargs = _call_kwargs(runtime, body, COMPLETION_FIELDS, CompletionRequest)
        return await call_upstream(
            gateway, runtime, runtime.router.atext_completion, kwargs, "/completions"
        )

    async def embeddings(
        self, gateway: Gateway, runtime: Runtime, request: Request, body: dict[str, Any]
    ) -> Response:
        kwargs = _call_kwargs(runtime, body, EMBEDDING_FIELDS, EmbeddingRequest)
        mocked = mock_embeddings(runtime, kwargs)
        if mocked is not None:
            return JSONResponse(mocked)
        return await call_upstream(
            gateway, runtime, runtime.router.aembedding, kwargs, "/embeddings"
        )

    async def models(
        self, gateway: Gateway, runtime: Runtime, request: Request, body: dict[str, Any]
    ) -> Response:
        data = [_model_card(gateway, name) for name in runtime.config.model_names]
        return JSONResponse({"object": "list", "data": data})

    async def model(
        self, gateway: Gateway, runtime: Runtime, request: Request, body: dict[str, Any]
    ) -> Response:
        name = request.path_params["model"]
        if name not in runtime.known_models:
            raise ApiError(
                404, f"the model '{name}' does not exist", param="model", code="model_not_found"
            )
        return JSONResponse(_model_card(gateway, name))


def _model_card(gateway: Gateway, name: str) -> dict[str, Any]:
    created = int(gateway.events.events[0].wall_time) if len(gateway.events) else 0
    return {"id": name, "object": "model", "created": created, "owned_by": "routeiq"}


# --- request checks ---------------------------------------------------------------------------


def _authorize(request: Request, runtime: Runtime) -> None:
    # One pass over the raw ASGI headers (their names are lower case).
    sent = [value for name, value in request.scope["headers"] if name == b"authorization"]
    if len(sent) > 1:
        raise ApiError(
            400, "send one 'Authorization' header, not several", code="invalid_authorization"
        )
    key = runtime.config.master_key
    if key is None:
        return
    token = bearer_token({"authorization": sent[0].decode("latin-1")}) if sent else None
    if token is None:
        raise ApiError(
            401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
        )
    if not key_matches(token, key):
        raise ApiError(401, "incorrect API key provided", code="invalid_api_key")


async def _json_body(request: Request, runtime: Runtime) -> dict[str, Any]:
    """The request's body as a JSON object within ``routeiq.limits``; else a 4xx ``ApiError``."""
    return await read_json_body(request, runtime.config.routeiq.limits)


def _call_kwargs(
    runtime: Runtime, body: dict[str, Any], allowed: frozenset[str], schema: type[BaseModel]
) -> dict[str, Any]:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            400, f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
        )
    validate_request(schema, body)
    model = body["model"]
    if model not in runtime.known_models:
        raise ApiError(
            404, f"the model '{model}' does not exist", param="model", code="model_not_found"
        )
    # An explicit null is an absent field (as OpenAI reads it): litellm fails on some, e.g.
    # ``"metadata": null`` raised in its own code (a 502 blaming the upstream).
    kwargs = {name: value for name, value in body.items() if value is not None}
    settings = runtime.config.litellm_settings
    if "drop_params" in settings:
        kwargs.setdefault("drop_params", settings["drop_params"])
    if "request_timeout" in settings:
        kwargs.setdefault("timeout", settings["request_timeout"])
    if "num_retries" in settings:
        kwargs.setdefault("num_retries", settings["num_retries"])
    return kwargs


# --- metrics ----------------------------------------------------------------------------------


def _count(metrics: GatewayMetrics, route: str, model: str, status: int, started: float) -> None:
    metrics.gateway_inflight_requests.dec()
    status_class = f"{status // 100}xx"
    metrics.child(metrics.gateway_requests_total, route, model, status_class).inc()
    metrics.child(metrics.gateway_request_duration_seconds, route).observe(
        time.perf_counter() - started
    )


class _AccountedStream(Response):
    """A streamed answer, accounted exactly once when its response ends, however it ends:
    finished, failed, cancelled, or never started (the client gone before the first chunk)."""

    def __init__(
        self,
        inner: StreamingResponse,
        metrics: GatewayMetrics | None,
        route: str,
        model: str,
        started: float,
        span: RequestSpan,
    ) -> None:
        self._inner, self._source = inner, inner.body_iterator
        self._metrics, self._route, self._model = metrics, route, model
        self._started, self._span = started, span
        self.status_code, self.background = inner.status_code, inner.background
        self.raw_headers = inner.raw_headers
        inner.body_iterator = self._timed()

    async def _timed(self) -> AsyncIterator[Any]:
        first = self._metrics  # observed once, on the first chunk
        async for chunk in self._source:
            if first is not None:
                first.gateway_time_to_first_token_seconds.observe(
                    time.perf_counter() - self._started
                )
                first = None
            yield chunk

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self._inner(scope, receive, send)
        finally:
            if self._metrics is not None:
                _count(self._metrics, self._route, self._model, self.status_code, self._started)
            self._span.end()
            await aclose_quietly(self._source)
