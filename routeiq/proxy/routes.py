"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models``, served through this app instance's ``litellm.Router``.

Guarantees: a malformed or invalid request is a 4xx with OpenAI's error body, never a 500;
keys are compared in constant time and never echoed; clients cannot set provider parameters
(``api_base``, ``api_key``, mock options…) because only OpenAI's request fields are forwarded;
metric labels are bounded (a model name the config does not know is counted as ``other``).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from routeiq.proxy.errors import ApiError, map_upstream_error
from routeiq.proxy.passthrough import Passthrough, stream_usage
from routeiq.routing.decisions import recording_decisions

if TYPE_CHECKING:
    from routeiq.app import GatewayApp
    from routeiq.lifecycle.gateway import Gateway

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

    def endpoint(
        self, route: str, handler: Callable[[Request, Gateway, dict[str, Any]], Awaitable[Response]]
    ) -> Handler:
        async def serve(request: Request) -> Response:
            started = time.perf_counter()
            gateway = self._holder.gateway
            metrics = None if gateway is None else gateway.metrics
            if metrics is not None:
                metrics["gateway_inflight_requests"].inc()
            labels = {"model": "other"}
            response: Response
            try:
                if gateway is None or gateway.router is None or gateway.config is None:
                    raise ApiError(503, "the gateway is not serving yet", code="not_ready")
                self._authorize(request, gateway)
                body = {} if request.method == "GET" else await self._json_body(request, gateway)
                model = body.get("model")
                if isinstance(model, str) and model in gateway.config.model_names:
                    labels["model"] = model
                response = await handler(request, gateway, body)
            except ApiError as exc:
                response = exc.response()
            if metrics is not None:
                if isinstance(response, StreamingResponse):
                    response = self._count_stream(
                        response, metrics, route, labels["model"], started
                    )
                else:
                    self._count(metrics, route, labels["model"], response.status_code, started)
            return response

        return serve

    # --- request checks --------------------------------------------------------------------

    def _authorize(self, request: Request, gateway: Gateway) -> None:
        key = gateway.config.master_key if gateway.config else None
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
            )
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    async def _json_body(self, request: Request, gateway: Gateway) -> dict[str, Any]:
        assert gateway.config is not None
        limit = gateway.config.routeiq.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413, f"request body is larger than {limit} bytes", code="request_too_large"
            )
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413, f"request body is larger than {limit} bytes", code="request_too_large"
                    )
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "the client disconnected while sending the body") from None
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(
                400, f"the request body is not valid JSON: {exc}", code="invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_request")
        return body

    def _call_kwargs(
        self, gateway: Gateway, body: dict[str, Any], allowed: frozenset[str]
    ) -> dict[str, Any]:
        assert gateway.config is not None
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ApiError(
                400, f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' is required and must be a string", param="model")
        known = set(gateway.config.model_names) | set(
            gateway.config.router_settings.get("model_group_alias") or {}
        )
        if model not in known:
            raise ApiError(
                404, f"the model '{model}' does not exist", param="model", code="model_not_found"
            )
        if "stream" in body and not isinstance(body["stream"], bool):
            raise ApiError(400, "'stream' must be a boolean", param="stream")
        if "user" in body and not isinstance(body["user"], str):
            raise ApiError(400, "'user' must be a string", param="user")
        kwargs = dict(body)
        settings = gateway.config.litellm_settings
        if "drop_params" in settings:
            kwargs.setdefault("drop_params", settings["drop_params"])
        if "request_timeout" in settings:
            kwargs.setdefault("timeout", settings["request_timeout"])
        if "num_retries" in settings:
            kwargs.setdefault("num_retries", settings["num_retries"])
        return kwargs

    # --- endpoints ---------------------------------------------------------------------------

    async def chat(self, request: Request, gateway: Gateway, body: dict[str, Any]) -> Response:
        kwargs = self._call_kwargs(gateway, body, CHAT_FIELDS)
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
        return await self._call(
            gateway, gateway.router.acompletion, kwargs, upstream_path="/chat/completions"
        )

    async def completions(
        self, request: Request, gateway: Gateway, body: dict[str, Any]
    ) -> Response:
        kwargs = self._call_kwargs(gateway, body, COMPLETION_FIELDS)
        prompt = kwargs.get("prompt")
        if not isinstance(prompt, (str, list)) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string or array", param="prompt")
        return await self._call(
            gateway, gateway.router.atext_completion, kwargs, upstream_path="/completions"
        )

    async def embeddings(
        self, request: Request, gateway: Gateway, body: dict[str, Any]
    ) -> Response:
        kwargs = self._call_kwargs(gateway, body, EMBEDDING_FIELDS)
        value = kwargs.get("input")
        if not isinstance(value, (str, list)) or not value:
            raise ApiError(400, "'input' must be a non-empty string or array", param="input")
        return await self._call(
            gateway, gateway.router.aembedding, kwargs, upstream_path="/embeddings"
        )

    async def models(self, request: Request, gateway: Gateway, body: dict[str, Any]) -> Response:
        assert gateway.config is not None
        created = int(gateway.events.events[0].wall_time) if len(gateway.events) else 0
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "routeiq"}
            for name in gateway.config.model_names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _call(
        self,
        gateway: Gateway,
        method: Callable[..., Awaitable[Any]],
        kwargs: dict[str, Any],
        *,
        upstream_path: str,
    ) -> Response:
        with recording_decisions() as recorder:
            response = await self._fast_path(gateway, kwargs, upstream_path)
            if response is None:
                response = await self._litellm_path(gateway, method, kwargs)
        decision = recorder.last
        if decision is not None:
            response.headers["x-routeiq-deployment"] = decision.deployment_id
            response.headers["x-routeiq-strategy"] = decision.strategy
            response.headers["x-routeiq-arm"] = decision.arm
        return response

    async def _fast_path(
        self, gateway: Gateway, kwargs: dict[str, Any], upstream_path: str
    ) -> Response | None:
        """Forward through the Router's pick, or ``None`` to use litellm's call path."""
        passthrough: Passthrough | None = gateway.extensions.get("passthrough")
        if passthrough is None:
            return None
        try:
            deployment = await gateway.router.select(
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
        relay = await passthrough.forward(target, upstream_path, kwargs)
        if relay is None:
            return None
        headers = {"x-routeiq-deployment": target.deployment_id}
        if relay.chunks is None:
            if relay.usage is not None:
                _count_tokens(gateway, relay.usage)
            return Response(relay.body, 200, headers=headers, media_type=relay.content_type)
        headers["cache-control"] = "no-cache"
        return DisconnectAwareStream(
            _count_stream_usage(relay.chunks, gateway),
            headers=headers,
            media_type="text/event-stream",
        )

    async def _litellm_path(
        self, gateway: Gateway, method: Callable[..., Awaitable[Any]], kwargs: dict[str, Any]
    ) -> Response:
        redact = gateway.events.redactor
        try:
            result = await method(**kwargs)
        except ApiError:
            raise
        except Exception as exc:
            raise map_upstream_error(exc, redact) from None
        if kwargs.get("stream"):
            return DisconnectAwareStream(
                _sse(result, redact, gateway),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        usage = getattr(result, "usage", None)
        if usage is not None:
            _count_tokens(gateway, usage)
        return JSONResponse(result.model_dump(mode="json", exclude_none=True))

    # --- metrics ------------------------------------------------------------------------------

    @staticmethod
    def _count(metrics: Any, route: str, model: str, status: int, started: float) -> None:
        metrics["gateway_inflight_requests"].dec()
        metrics["gateway_requests_total"].labels(
            route=route, model=model, status_class=f"{status // 100}xx"
        ).inc()
        metrics["gateway_request_duration_seconds"].labels(route=route).observe(
            time.perf_counter() - started
        )

    def _count_stream(
        self, response: StreamingResponse, metrics: Any, route: str, model: str, started: float
    ) -> StreamingResponse:
        source = response.body_iterator
        count = self._count

        async def counted() -> AsyncIterator[Any]:
            first = True
            try:
                async for chunk in source:
                    if first:
                        first = False
                        metrics["gateway_time_to_first_token_seconds"].observe(
                            time.perf_counter() - started
                        )
                    yield chunk
            finally:
                count(metrics, route, model, response.status_code, started)
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()

        response.body_iterator = counted()
        return response


class DisconnectAwareStream(StreamingResponse):
    """Streams until done or until the client disconnects, then closes the body iterator.

    Starlette stops listening for ``http.disconnect`` on newer ASGI servers and relies on
    ``send`` failing, which hypercorn does not do: a gone client would keep the upstream
    generating. Closing the iterator closes the upstream stream (see ``_sse``).
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        iterator = self.body_iterator
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                await self.stream_response(send)
                tg.cancel_scope.cancel()
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


def _count_tokens(gateway: Gateway, usage: Any) -> None:
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


async def _count_stream_usage(
    chunks: AsyncIterator[bytes], gateway: Gateway
) -> AsyncIterator[bytes]:
    """Relays SSE bytes unchanged, counting the usage chunk's tokens (lines may span chunks)."""
    pending = b""
    try:
        async for chunk in chunks:
            yield chunk
            pending += chunk
            cut = pending.rfind(b"\n")
            if cut >= 0:
                usage = stream_usage(pending[:cut])
                if usage is not None:
                    _count_tokens(gateway, usage)
                pending = pending[cut + 1 :]
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()


async def _sse(stream: Any, redact: Callable[[str], str], gateway: Gateway) -> AsyncIterator[bytes]:
    """OpenAI's SSE framing; closing this generator (client gone) closes the upstream stream."""
    try:
        async for chunk in stream:
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                _count_tokens(gateway, usage)
            yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"
    except Exception as exc:
        error = map_upstream_error(exc, redact)
        body = {
            "error": {
                "message": error.message,
                "type": "upstream_error",
                "param": None,
                "code": error.code,
            }
        }
        yield b"data: " + json.dumps(body).encode() + b"\n\n"
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()
    yield b"data: [DONE]\n\n"
