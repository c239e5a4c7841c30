"""A tracer provider per app instance (never the global one).

OTLP export is an optional extra: it is set up only when an endpoint is configured through the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT``/``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from routeiq.config.model import GatewayConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["OTLP_INSTALL_HINT", "build_tracer_provider"]

OTLP_INSTALL_HINT = "pip install 'routeiq[otlp]'"


def build_tracer_provider(
    config: GatewayConfig, worker_id: str, *, env: dict[str, str] | None = None
) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    env = dict(os.environ) if env is None else env
    provider = TracerProvider(
        resource=Resource.create({"service.name": "routeiq", "service.instance.id": worker_id})
    )
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        provider.add_span_processor(_otlp_processor())
    return provider


def _otlp_processor() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ImportError(f"OTLP export needs the otlp extra: {OTLP_INSTALL_HINT}") from exc
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter())
