"""Traces for one app instance: its tracer provider, and one GenAI span per API request.

Each app instance builds its own ``TracerProvider``; nothing here reads or sets OpenTelemetry's
global provider or the current context, so two gateways in one process never mix their spans.
OTLP export is an optional extra, set up only when an endpoint is configured through the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT``/``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables. An
endpoint set without the extra installed is a configuration error (``ConfigError`` naming the
variable and the install command; the gateway exits 2 like for any invalid config), not a
warning: an operator who sets an endpoint expects traces, and a gateway that starts without
them would fail silently.

Request spans follow OpenTelemetry's GenAI semantic conventions for an inference client (the
gateway is the client of the upstream model): kind ``CLIENT``, named
``"{gen_ai.operation.name} {gen_ai.request.model}"``, with the provider, response model and
token usage, plus RouteIQ's routing decision under ``routeiq.routing.*``. Prompts and
completions are never recorded. opentelemetry is imported when a provider is built, not when
this module is.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from routeiq.config.model import GatewayConfig
from routeiq.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "OPERATION_OF_ROUTE",
    "OTLP_INSTALL_HINT",
    "REQUEST_TRACER",
    "RequestSpan",
    "build_tracer_provider",
    "current_request_span",
    "otlp_problems",
    "provider_name",
    "request_span",
]

OTLP_INSTALL_HINT = "pip install 'routeiq[otlp]'"
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
REQUEST_TRACER = "routeiq.proxy"

# gen_ai.operation.name of each OpenAI route (semconv's GenAiOperationNameValues).
OPERATION_OF_ROUTE: Mapping[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}

# litellm's provider prefixes → semconv's gen_ai.provider.name well-known values; any other
# provider is reported under litellm's own name.
_PROVIDERS: Mapping[str, str] = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "azure": "azure.ai.openai",
    "azure_text": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "anthropic": "anthropic",
    "bedrock": "aws.bedrock",
    "vertex_ai": "gcp.vertex_ai",
    "vertex_ai_beta": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "groq": "groq",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "perplexity": "perplexity",
    "watsonx": "ibm.watsonx.ai",
    "watsonx_text": "ibm.watsonx.ai",
}


def build_tracer_provider(
    config: GatewayConfig, worker_id: str, *, env: Mapping[str, str] | None = None
) -> TracerProvider:
    """A new provider for one app instance; OTLP export only when an endpoint is configured."""
    from opentelemetry.sdk.resources import Resource

    env = dict(os.environ) if env is None else env
    provider = _gateway_provider_class()(
        resource=Resource.create(
            {
                "service.name": "routeiq",
                "service.instance.id": worker_id,
                "process.pid": os.getpid(),
            }
        )
    )
    problems = otlp_problems(env)
    if problems:
        raise ConfigError(problems, source="the environment")
    if any(env.get(name) for name in OTLP_ENDPOINT_VARIABLES):
        provider.add_span_processor(_otlp_processor())
    return provider


@functools.cache
def _gateway_provider_class() -> type[TracerProvider]:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class GatewayTracerProvider(TracerProvider):
        """Knows whether any span processor was added: until one is, a request span would go
        nowhere, and ``request_span`` skips it (≈ 10 % of a fast-path request's CPU)."""

        exports = False

        def add_span_processor(self, span_processor: SpanProcessor) -> None:
            super().add_span_processor(span_processor)
            self.exports = True

    return GatewayTracerProvider


def otlp_problems(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(variable, message)`` for each OTLP endpoint variable set while the extra is missing."""
    set_names = [name for name in OTLP_ENDPOINT_VARIABLES if env.get(name)]
    if not set_names:
        return []
    try:
        from opentelemetry.exporter.otlp.proto.http import trace_exporter  # noqa: F401
    except ImportError:
        message = f"is set, but OTLP export needs the otlp extra: {OTLP_INSTALL_HINT} (or unset it)"
        return [(name, message) for name in set_names]
    return []


def _otlp_processor() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter())


def provider_name(model_or_provider: str) -> str:
    """``gen_ai.provider.name`` for a litellm model (``"openai/gpt-4o"``) or provider name."""
    provider = model_or_provider.split("/", 1)[0] if "/" in model_or_provider else model_or_provider
    return _PROVIDERS.get(provider, provider)


class RequestSpan:
    """The span of one API request; every setter is a no-op when tracing is off.

    Setters never raise on odd values (a missing usage, a non-string model): telemetry must not
    fail a request.
    """

    __slots__ = ("_end_later", "_ended", "operation", "span")

    def __init__(self, span: Span | None, operation: str = "") -> None:
        self.span = span
        self.operation = operation
        self._end_later = False
        self._ended = False

    @property
    def recording(self) -> bool:
        return self.span is not None and self.span.is_recording()

    def set_attribute(self, key: str, value: str | bool | int | float) -> None:
        if self.span is not None:
            self.span.set_attribute(key, value)

    def set_request_model(self, model: object) -> None:
        """The model the client asked for (known once the body is parsed); renames the span."""
        if self.span is not None and isinstance(model, str) and model:
            self.span.set_attribute("gen_ai.request.model", model)
            self.span.update_name(f"{self.operation} {model}")

    def set_response_model(self, model: object) -> None:
        if isinstance(model, str) and model:
            self.set_attribute("gen_ai.response.model", model)

    def set_provider(self, model_or_provider: object) -> None:
        """The provider from a litellm model string (``"openai/gpt-4o"``) or provider name."""
        if isinstance(model_or_provider, str) and model_or_provider:
            self.set_attribute("gen_ai.provider.name", provider_name(model_or_provider))

    def set_tokens(
        self, *, input_tokens: int | None = None, output_tokens: int | None = None
    ) -> None:
        if isinstance(input_tokens, int) and input_tokens >= 0:
            self.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if isinstance(output_tokens, int) and output_tokens >= 0:
            self.set_attribute("gen_ai.usage.output_tokens", output_tokens)

    def set_routing(self, *, strategy: str, arm: str, deployment: str) -> None:
        """The routing decision that served the request (the last pick, after retries)."""
        self.set_attribute("routeiq.routing.strategy", strategy)
        self.set_attribute("routeiq.routing.arm", arm)
        self.set_attribute("routeiq.routing.deployment", deployment)

    def set_status_code(self, status_code: int, message: str | None = None) -> None:
        """The HTTP status the gateway answered; 4xx and 5xx mark the span as an error."""
        if self.span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("routeiq.response.status_code", status_code)
        if status_code >= 400:
            # semconv: without a better classification, error.type is the status code.
            self.span.set_attribute("error.type", str(status_code))
            self.span.set_status(Status(StatusCode.ERROR, message))

    def record_error(self, exc: BaseException) -> None:
        if self.span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("error.type", type(exc).__qualname__)
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))

    def end_later(self) -> None:
        """Keep the span open past the ``request_span`` block (a stream): call ``end()`` then."""
        self._end_later = True

    def end(self) -> None:
        """End the span now; later calls do nothing."""
        if self._ended:
            return
        self._ended = True
        if self.span is not None:
            self.span.end()


_current: ContextVar[RequestSpan | None] = ContextVar("routeiq_request_span", default=None)
_request_tracers: weakref.WeakKeyDictionary[TracerProvider, Tracer] = weakref.WeakKeyDictionary()


_NO_SPAN = RequestSpan(None)


def current_request_span() -> RequestSpan:
    """The span of the ``request_span`` block this code runs in, else a no-op span."""
    return _current.get() or _NO_SPAN


@contextmanager
def request_span(
    tracer_provider: TracerProvider | None,
    *,
    operation: str,
    request_model: object = None,
    headers: Mapping[str, str] | None = None,
) -> Iterator[RequestSpan]:
    """Trace one API call: a GenAI ``CLIENT`` span, ended when the block exits.

    ``headers`` are the incoming request's headers: a W3C ``traceparent`` in them makes the span
    a child of the caller's trace. An exception escaping the block is recorded on the span and
    re-raised. Inside a block that returns a stream, call ``end_later()`` and then ``end()``
    when the stream finishes. Within the block (and tasks started from it)
    ``current_request_span()`` returns the span. With no provider (tracing not set up yet) the
    span is a no-op, and so it is while the gateway's provider has no span processor (no OTLP
    endpoint): nothing would receive it, and the caller's trace context goes no further.
    """
    if tracer_provider is None or not getattr(tracer_provider, "exports", True):
        yield RequestSpan(None, operation)
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = None
    if headers is not None and "traceparent" in headers:
        parent = TraceContextTextMapPropagator().extract(headers)
    model = request_model if isinstance(request_model, str) and request_model else None
    attributes: dict[str, str] = {"gen_ai.operation.name": operation}
    if model is not None:
        attributes["gen_ai.request.model"] = model
    tracer = _request_tracers.get(tracer_provider)
    if tracer is None:
        # One per provider: get_tracer() builds a new Tracer (and its scope) on every call.
        tracer = _request_tracers[tracer_provider] = tracer_provider.get_tracer(REQUEST_TRACER)
    span = tracer.start_span(
        f"{operation} {model}" if model is not None else operation,
        context=parent,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )
    handle = RequestSpan(span, operation)
    token = _current.set(handle)
    try:
        yield handle
    except BaseException as exc:
        handle.record_error(exc)
        handle.end()
        raise
    finally:
        _current.reset(token)
    if not handle._end_later:
        handle.end()
