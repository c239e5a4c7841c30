"""Traces: the startup trace projected from the event log, and GenAI request spans."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from routeiq.assembly.gateway import Gateway
from routeiq.config.loader import load_config
from routeiq.errors import ConfigError, StartupError
from routeiq.lifecycle.clock import ManualClock
from routeiq.lifecycle.events import EventKind, EventLog
from routeiq.lifecycle.hooks import HookContext
from routeiq.observability.startup_trace import StartupTraceProjection
from routeiq.observability.tracing import (
    OTLP_INSTALL_HINT,
    build_tracer_provider,
    current_request_span,
    otlp_problems,
    provider_name,
    request_span,
)
from tests.support.procs import BIN, free_port, gateway_env

PHASES = ["configure", "observe", "patch", "serve"]
MODEL = {
    "model_name": "m",
    "litellm_params": {"model": "openai/m", "mock_response": "hi", "api_key": "sk-up-123"},
}
# Projections subscribed by the ``subscribe_trace`` hook, keyed by worker id.
MID_STARTUP: dict[str, tuple[StartupTraceProjection, InMemorySpanExporter]] = {}


@pytest.fixture(autouse=True)
def _clean_mid_startup() -> Iterator[None]:
    MID_STARTUP.clear()
    yield
    MID_STARTUP.clear()


def recording_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def subscribe_trace(ctx: HookContext) -> None:
    """An observe-phase hook: subscribes a projection with replay, as the gateway's wiring does."""
    provider, exporter = recording_provider()
    projection = StartupTraceProjection(provider)
    ctx.events.subscribe(projection, replay=True)
    MID_STARTUP[ctx.worker_id] = (projection, exporter)


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_name(span: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> str | None:
    if span.parent is None:
        return None
    return next(s.name for s in spans if s.context.span_id == span.parent.span_id)


def shape(spans: tuple[ReadableSpan, ...]) -> list[tuple[Any, ...]]:
    """Everything about a trace except its random ids, in a comparable form."""
    assert len({s.context.trace_id for s in spans}) == 1
    return sorted(
        (
            s.name,
            parent_name(s, spans),
            s.start_time,
            s.end_time,
            s.status.status_code,
            s.status.description,
            tuple(sorted((s.attributes or {}).items())),
            tuple((e.name, e.timestamp, tuple((e.attributes or {}).items())) for e in s.events),
        )
        for s in spans
    )


def ns(seconds: float) -> int:
    return round(seconds * 1e9)


# --- the startup trace from a hand-written log --------------------------------------------


def startup_log(*, fail_in: str | None = None, abort_in: str | None = None) -> EventLog:
    """The events of a startup, with known durations: 0.2 s per component, 1 s per hook."""
    clock = ManualClock(wall=1_700_000_000.0, monotonic=50.0)
    log = EventLog(clock, worker_id="w1", pid=42)
    log.append(EventKind.CREATED, to_state="created", attributes={"process_uptime_s": 0.5})
    state = "created"
    components = {"configure": ["config"], "observe": ["metrics"], "patch": ["litellm", "router"]}
    for trigger, to_state in zip(
        PHASES, ["configured", "observing", "patched", "serving"], strict=True
    ):
        for component in [*components.get(trigger, []), f"hook:{trigger}"]:
            duration = 1.0 if component.startswith("hook:") else 0.2
            clock.advance(duration)
            broken = component == f"hook:{fail_in}"
            log.append(
                EventKind.COMPONENT,
                component=component,
                duration_s=duration,
                ok=not broken,
                error="RuntimeError: injected failure" if broken else None,
                attributes={"phase": trigger},
            )
            if broken:
                log.append(
                    EventKind.TRANSITION,
                    trigger="fail",
                    from_state=state,
                    to_state="failed",
                    ok=False,
                    error="RuntimeError: injected failure",
                    attributes={"phase": trigger},
                )
                return log
        if trigger == abort_in:
            log.append(
                EventKind.TRANSITION,
                trigger="drain",
                from_state=state,
                to_state="draining",
                attributes={"phase": trigger},
            )
            return log
        clock.advance(0.1)
        log.append(EventKind.TRANSITION, trigger=trigger, from_state=state, to_state=to_state)
        state = to_state
    clock.advance(5)
    log.append(EventKind.SERVICE, trigger="started", component="sync")
    log.append(EventKind.TRANSITION, trigger="drain", from_state="serving", to_state="draining")
    return log


def project(log: EventLog) -> tuple[StartupTraceProjection, tuple[ReadableSpan, ...]]:
    provider, exporter = recording_provider()
    projection = StartupTraceProjection(provider)
    log.subscribe(projection)
    return projection, exporter.get_finished_spans()


def test_startup_trace_has_a_root_a_span_per_phase_and_per_component() -> None:
    projection, spans = project(startup_log())
    named = by_name(spans)
    assert projection.outcome == "serving"
    assert sorted(named) == sorted(
        ["startup"]
        + [f"phase {p}" for p in PHASES]
        + [f"component {c}" for c in ["config", "metrics", "litellm", "router"]]
        + [f"component hook:{p}" for p in PHASES]
    )
    assert {n: parent_name(s, spans) for n, s in named.items() if n.startswith("phase")} == {
        f"phase {p}": "startup" for p in PHASES
    }
    assert parent_name(named["component config"], spans) == "phase configure"
    assert parent_name(named["component router"], spans) == "phase patch"
    assert parent_name(named["component hook:serve"], spans) == "phase serve"
    assert projection.trace_id == f"{spans[0].context.trace_id:032x}"
    # Times come from the events: each phase ends at its transition, components end at their
    # event and start `duration_s` earlier.
    t0 = ns(1_700_000_000.0)
    root = named["startup"]
    assert (root.start_time, root.end_time) == (t0, t0 + ns(5.2))
    configure, observe = named["phase configure"], named["phase observe"]
    assert (configure.start_time, configure.end_time) == (t0, t0 + ns(1.3))
    assert (observe.start_time, observe.end_time) == (t0 + ns(1.3), t0 + ns(2.6))
    assert (named["component metrics"].start_time, named["component metrics"].end_time) == (
        t0 + ns(1.3),
        t0 + ns(1.5),
    )
    assert named["phase serve"].end_time == root.end_time
    assert all(s.status.status_code == StatusCode.UNSET for s in spans)
    assert root.kind == SpanKind.INTERNAL
    assert dict(root.attributes or {}) == {
        "routeiq.worker_id": "w1",
        "process.pid": 42,
        "routeiq.process_uptime_s": 0.5,
        "routeiq.startup.outcome": "serving",
    }
    assert named["component router"].attributes == {
        "routeiq.worker_id": "w1",
        "process.pid": 42,
        "routeiq.component": "router",
        "routeiq.phase": "patch",
    }


@pytest.mark.parametrize("phase", PHASES)
def test_a_failed_startup_shows_the_failing_span_with_its_error(phase: str) -> None:
    projection, spans = project(startup_log(fail_in=phase))
    named = by_name(spans)
    assert projection.outcome == "failed"
    failed = sorted(n for n, s in named.items() if s.status.status_code == StatusCode.ERROR)
    assert failed == sorted(["startup", f"phase {phase}", f"component hook:{phase}"])
    for name in failed:
        assert named[name].status.description == "RuntimeError: injected failure"
        assert attrs(named[name])["error.type"] == "RuntimeError"
        assert [e.name for e in named[name].events] == ["exception"]
    assert attrs(named["startup"])["routeiq.startup.failed_phase"] == phase
    later = PHASES[PHASES.index(phase) + 1 :]
    assert not any(f"phase {p}" in named for p in later)
    assert named[f"phase {phase}"].end_time == named["startup"].end_time


def test_a_startup_drained_before_serving_ends_the_trace_without_error() -> None:
    projection, spans = project(startup_log(abort_in="patch"))
    named = by_name(spans)
    assert projection.outcome == "aborted"
    assert "phase serve" not in named
    assert named["phase patch"].end_time == named["startup"].end_time
    assert all(s.status.status_code == StatusCode.UNSET for s in spans)


def test_replay_subscribed_mid_startup_gives_the_same_trace_as_live() -> None:
    full = startup_log()
    live_provider, live = recording_provider()
    late_provider, late = recording_provider()
    replayed = EventLog(ManualClock(), worker_id="w1", pid=42)
    replayed.subscribe(StartupTraceProjection(live_provider))
    for event in full.events:
        replayed.extend_raw(event)
        if event.kind == EventKind.TRANSITION and event.to_state == "observing":
            replayed.subscribe(StartupTraceProjection(late_provider), replay=True)
    assert shape(late.get_finished_spans()) == shape(live.get_finished_spans())
    assert shape(live.get_finished_spans()) == shape(project(full)[1])


def test_events_after_the_end_of_startup_are_not_traced() -> None:
    log = startup_log()
    provider, exporter = recording_provider()
    projection = StartupTraceProjection(provider)
    log.subscribe(projection)
    before = len(exporter.get_finished_spans())
    log.append(EventKind.COMPONENT, component="late", duration_s=0.1)
    log.append(EventKind.TRANSITION, trigger="stop", from_state="draining", to_state="stopped")
    assert len(exporter.get_finished_spans()) == before
    assert projection.outcome == "serving"


# --- the startup trace of a real gateway ---------------------------------------------------


def write_config(tmp_path: Path, hooks: list[dict[str, str]]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [MODEL], "routeiq": {"hooks": hooks}}))
    return path


def trace_hooks(*, fail_in: str | None = None) -> list[dict[str, str]]:
    specs = [{"phase": p, "call": "tests.support.hooks:record", "name": p} for p in PHASES]
    specs.append({"phase": "observe", "call": "tests.observability.test_tracing:subscribe_trace"})
    if fail_in is not None:
        specs.append({"phase": fail_in, "call": "tests.support.hooks:fail", "name": "boom"})
    return specs


@pytest.mark.anyio
async def test_real_gateway_startup_trace_is_the_same_live_mid_startup_and_replayed(
    tmp_path: Path,
) -> None:
    gateway = Gateway(env={}, config_path=write_config(tmp_path, trace_hooks()))
    live_provider, live = recording_provider()
    gateway.events.subscribe(StartupTraceProjection(live_provider))
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        gateway.release()
    replay_provider, replayed = recording_provider()
    projection = StartupTraceProjection(replay_provider)
    for event in gateway.events.events:
        projection(event)
    mid_projection, mid = MID_STARTUP[gateway.worker_id]

    spans = live.get_finished_spans()
    assert shape(replayed.get_finished_spans()) == shape(spans)
    assert shape(mid.get_finished_spans()) == shape(spans)
    assert projection.outcome == mid_projection.outcome == "serving"

    named = by_name(spans)
    assert [n for n in named if n.startswith("phase ")] == [f"phase {p}" for p in PHASES]
    expected_parents = {
        "config": "configure",
        "hook:configure": "configure",
        "metrics": "observe",
        "logging": "observe",
        "tracing": "observe",
        "hook:subscribe_trace": "observe",
        "litellm": "patch",
        "router": "patch",
        "hook:serve": "serve",
    }
    for component, phase in expected_parents.items():
        assert parent_name(named[f"component {component}"], spans) == f"phase {phase}"
    events = gateway.events.events
    created = events[0]
    serving = next(e for e in events if e.to_state == "serving")
    root = named["startup"]
    assert root.start_time == ns(created.wall_time)
    assert root.end_time == ns(created.wall_time) + ns(serving.mono_time - created.mono_time)
    for span in spans:
        assert span.start_time is not None and span.end_time is not None
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
        assert span.status.status_code == StatusCode.UNSET
    # The phases tile the startup with no gap.
    phases = [named[f"phase {p}"] for p in PHASES]
    assert [p.start_time for p in phases[1:]] == [p.end_time for p in phases[:-1]]


@pytest.mark.anyio
async def test_real_gateway_failed_startup_trace_shows_the_failing_component(
    tmp_path: Path,
) -> None:
    gateway = Gateway(env={}, config_path=write_config(tmp_path, trace_hooks(fail_in="patch")))
    with pytest.raises(StartupError):
        await gateway.run()
    projection, exporter = MID_STARTUP[gateway.worker_id]
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    assert projection.outcome == "failed"
    errors = {n: s.status.description for n, s in named.items() if not s.status.is_ok}
    assert set(errors) == {"startup", "phase patch", "component hook:boom"}
    assert all("injected failure in phase patch" in str(text) for text in errors.values())
    assert "phase serve" not in named
    assert attrs(named["startup"])["routeiq.startup.failed_phase"] == "patch"


# --- request spans ---------------------------------------------------------------------------


def test_request_span_follows_genai_conventions_and_records_the_routing_decision() -> None:
    provider, exporter = recording_provider()
    with request_span(provider, operation="chat", request_model="routeiq-mock") as span:
        span.set_provider("openai/routeiq-mock")
        span.set_response_model("routeiq-mock-2024")
        span.set_tokens(input_tokens=10, output_tokens=20)
        span.set_routing(strategy="cost-aware", arm="b", deployment="dep-1")
        span.set_status_code(200)
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "chat routeiq-mock"
    assert finished.kind == SpanKind.CLIENT
    assert finished.status.status_code == StatusCode.UNSET
    assert dict(finished.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "routeiq-mock",
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": "routeiq-mock-2024",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 20,
        "routeiq.routing.strategy": "cost-aware",
        "routeiq.routing.arm": "b",
        "routeiq.routing.deployment": "dep-1",
        "routeiq.response.status_code": 200,
    }


@pytest.mark.parametrize("status", [400, 404, 502])
def test_request_span_marks_4xx_and_5xx_as_errors(status: int) -> None:
    provider, exporter = recording_provider()
    with request_span(provider, operation="chat", request_model="nope") as span:
        span.set_status_code(status, "the model 'nope' does not exist")
    (finished,) = exporter.get_finished_spans()
    assert finished.status.status_code == StatusCode.ERROR
    assert finished.status.description == "the model 'nope' does not exist"
    assert attrs(finished)["error.type"] == str(status)


def test_request_span_records_an_escaping_exception_and_reraises() -> None:
    provider, exporter = recording_provider()

    def fail() -> None:
        with request_span(provider, operation="embeddings", request_model="e") as span:
            span.set_provider("bedrock")
            raise ConnectionError("upstream gone")

    with pytest.raises(ConnectionError, match="upstream gone"):
        fail()
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "embeddings e"
    assert finished.status.status_code == StatusCode.ERROR
    assert attrs(finished)["error.type"] == "ConnectionError"
    assert attrs(finished)["gen_ai.provider.name"] == "aws.bedrock"
    assert [e.name for e in finished.events] == ["exception"]


def test_request_span_of_a_stream_ends_when_the_stream_does() -> None:
    provider, exporter = recording_provider()
    with request_span(provider, operation="chat", request_model="m") as span:
        span.end_later()
    assert exporter.get_finished_spans() == ()
    span.set_tokens(input_tokens=3, output_tokens=None)
    span.end()
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert attrs(finished)["gen_ai.usage.input_tokens"] == 3
    assert "gen_ai.usage.output_tokens" not in attrs(finished)


def test_request_span_continues_the_callers_trace() -> None:
    provider, exporter = recording_provider()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    with request_span(provider, operation="chat", request_model="m", headers=headers):
        pass
    with request_span(provider, operation="chat", request_model=None, headers={}):
        pass
    child, orphan = exporter.get_finished_spans()
    assert f"{child.context.trace_id:032x}" == trace_id
    assert child.parent is not None and f"{child.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert orphan.parent is None
    assert orphan.name == "chat"
    assert "gen_ai.request.model" not in attrs(orphan)


def test_request_span_opened_before_the_body_is_parsed_is_renamed_by_the_model() -> None:
    provider, exporter = recording_provider()
    assert not current_request_span().recording
    with request_span(provider, operation="text_completion") as span:
        assert current_request_span() is span
        current_request_span().set_request_model("gpt-3.5-turbo-instruct")
        current_request_span().set_request_model(42)
    assert not current_request_span().recording
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "text_completion gpt-3.5-turbo-instruct"
    assert attrs(finished)["gen_ai.request.model"] == "gpt-3.5-turbo-instruct"


def test_request_span_without_a_provider_is_a_no_op() -> None:
    with request_span(None, operation="chat", request_model="m") as span:
        span.set_tokens(input_tokens=1)
        span.set_status_code(500)
        span.set_routing(strategy="s", arm="a", deployment="d")
        assert not span.recording
    span.end()


def test_request_spans_are_skipped_until_the_gateways_provider_has_a_processor() -> None:
    provider = build_tracer_provider(load_config({}), "w1", env={})
    try:
        with request_span(provider, operation="chat", request_model="m") as span:
            assert span.span is None and not span.recording  # nothing would receive it
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with request_span(provider, operation="chat", request_model="m") as span:
            assert span.recording
        assert [s.name for s in exporter.get_finished_spans()] == ["chat m"]
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("openai/gpt-4o", "openai"),
        ("azure/gpt-4o", "azure.ai.openai"),
        ("bedrock/anthropic.claude-3", "aws.bedrock"),
        ("vertex_ai/gemini-pro", "gcp.vertex_ai"),
        ("mistral", "mistral_ai"),
        ("hosted_vllm/llama", "hosted_vllm"),
    ],
)
def test_provider_names_use_the_semconv_values(model: str, expected: str) -> None:
    assert provider_name(model) == expected


def test_tracer_provider_is_per_instance_and_never_global() -> None:
    config = load_config({})
    global_before = trace.get_tracer_provider()
    first = build_tracer_provider(config, "w1", env={})
    second = build_tracer_provider(config, "w2", env={})
    assert first is not second
    assert trace.get_tracer_provider() is global_before
    assert first.resource.attributes["service.instance.id"] == "w1"
    assert first.resource.attributes["service.name"] == "routeiq"
    first.shutdown()
    second.shutdown()


def _otlp_installed() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        return False
    return True


def test_otlp_export_needs_the_extra() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    if _otlp_installed():
        assert otlp_problems(env) == []
        build_tracer_provider(load_config({}), "w1", env=env).shutdown()
        return
    with pytest.raises(ConfigError) as raised:
        build_tracer_provider(load_config({}), "w1", env=env)
    assert raised.value.problems == tuple(otlp_problems(env))
    ((variable, message),) = raised.value.problems
    assert variable == "OTEL_EXPORTER_OTLP_ENDPOINT"
    assert OTLP_INSTALL_HINT in message
    assert otlp_problems({}) == [] == otlp_problems({"OTEL_EXPORTER_OTLP_ENDPOINT": ""})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_with_an_otlp_endpoint_but_no_extra_exits_2_with_the_install_hint() -> None:
    if _otlp_installed():
        pytest.skip("the otlp extra is installed here: the endpoint is valid")
    env = gateway_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    result = subprocess.run(
        [str(BIN / "routeiq"), "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in result.stderr
    assert OTLP_INSTALL_HINT in result.stderr
    assert "Traceback" not in result.stderr
