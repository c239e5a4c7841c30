"""Property-based tests of the statechart, the event log and its projections (hypothesis)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routeiq.assembly.gateway import Gateway
from routeiq.errors import InvalidTransition, StartupError
from routeiq.lifecycle.clock import ManualClock
from routeiq.lifecycle.events import EventKind, EventLog, Redactor
from routeiq.lifecycle.phases import StartupAborted
from routeiq.lifecycle.projections import LifecycleProjection, StartupTimeline, replay
from routeiq.lifecycle.statechart import Statechart

CHART = Statechart.load("gateway")
TRIGGERS = sorted({t.trigger for t in CHART.transitions})
STARTUP_ORDER = ["configured", "observing", "patched"]
# Keys look like keys ("sk-…"): an all-digit "secret" would also occur inside float reprs.
secrets_st = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=12, max_size=32
).map(lambda text: f"sk-{text}")


def assert_startup_order(log: EventLog) -> None:
    entered = [e.to_state for e in log.events if e.kind == EventKind.TRANSITION]
    if "serving" in entered:
        before = entered[: entered.index("serving")]
        assert before == STARTUP_ORDER, before


def assert_no_secret(log: EventLog, secret: str) -> None:
    for event in log.events:
        assert secret not in json.dumps(event.to_dict()), event


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(TRIGGERS), st.floats(0, 5), st.text(max_size=20)), max_size=30
    ),
    secret=secrets_st,
)
def test_random_trigger_sequences(steps: list[tuple[str, float, str]], secret: str) -> None:
    clock = ManualClock()
    log = EventLog(clock, worker_id="w", pid=1, redactor=Redactor([secret]))
    live_state, live_timeline = LifecycleProjection(CHART), StartupTimeline()
    log.subscribe(live_state)
    log.subscribe(live_timeline)
    log.append(EventKind.CREATED, to_state="created")
    for trigger, elapsed, note in steps:
        clock.advance(elapsed)
        before = live_state.state
        allowed = trigger in CHART.triggers_from(before)
        log.append(
            EventKind.COMPONENT,
            component=f"step-{note}",
            duration_s=elapsed,
            attributes={"key": secret},
        )
        if not allowed:
            with pytest.raises(InvalidTransition):
                CHART.target(before, trigger)
            continue
        log.append(
            EventKind.TRANSITION,
            trigger=trigger,
            from_state=before,
            to_state=CHART.target(before, trigger),
            error=f"credential {secret} rejected" if trigger == "fail" else None,
            attributes={"note": note + secret},
        )
    assert_startup_order(log)
    assert_no_secret(log, secret)
    replayed_state, replayed_timeline = replay(CHART, log.events)
    assert replayed_state.status() == live_state.status()
    assert replayed_timeline.to_dict() == live_timeline.to_dict()


@given(cut=st.integers(min_value=1, max_value=6), data=st.data())
def test_tampered_logs_are_rejected(cut: int, data: st.DataObject) -> None:
    clock = ManualClock()
    log = EventLog(clock, worker_id="w", pid=1)
    state = LifecycleProjection(CHART)
    log.subscribe(state)
    for trigger in ["configure", "observe", "patch", "serve", "drain", "stop"][:cut]:
        log.append(
            EventKind.TRANSITION,
            trigger=trigger,
            from_state=state.state,
            to_state=CHART.target(state.state, trigger),
        )
    events = list(log.events)
    victim = data.draw(st.integers(0, len(events) - 1))
    wrong = data.draw(st.sampled_from([s for s in CHART.states if s != events[victim].to_state]))
    tampered = [*events[:victim], _replace(events[victim], to_state=wrong), *events[victim + 1 :]]
    with pytest.raises(InvalidTransition):
        replay(CHART, tampered)


def _replace(event: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(event, **changes)


PHASES = ["configure", "observe", "patch", "serve"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fail_in=st.one_of(st.none(), st.sampled_from(PHASES)),
    drain_in=st.one_of(st.none(), st.sampled_from(PHASES[1:])),
    secret=secrets_st,
    upstream_key=secrets_st,
)
def test_real_gateway_runs_under_random_faults(
    fail_in: str | None, drain_in: str | None, secret: str, upstream_key: str
) -> None:
    """Real gateways with a failure and/or a drain injected at random phases."""
    hooks: list[dict[str, str]] = [
        {"phase": p, "call": "tests.support.hooks:record", "name": p} for p in PHASES
    ]
    if drain_in is not None:
        hooks.append({"phase": drain_in, "call": "tests.support.hooks:gate", "name": "gate"})
    if fail_in is not None:
        hooks.append(
            {"phase": fail_in, "call": "tests.support.hooks:fail_with_secret", "name": "boom"}
        )
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "model_list": [
                        {
                            "model_name": "m",
                            "litellm_params": {
                                "model": "openai/m",
                                "mock_response": "x",
                                "api_key": "os.environ/UPSTREAM_KEY",
                            },
                        }
                    ],
                    "routeiq": {"master_key": secret, "hooks": hooks},
                }
            )
        )
        gateway = Gateway(env={"UPSTREAM_KEY": upstream_key}, config_path=config)
        outcome = anyio.run(_run_gateway, gateway, drain_in)
    final = gateway.status()
    # The gate hook is declared before the failing one, so in the same phase the drain wins.
    if fail_in is not None and (drain_in is None or PHASES.index(fail_in) < PHASES.index(drain_in)):
        assert outcome == "failed" and final.state == "failed" and final.failed_phase == fail_in
    elif drain_in is not None:
        assert outcome == "aborted" and final.state == "stopped"
    else:
        assert outcome == "served" and final.state == "stopped"
    assert_startup_order(gateway.events)
    assert_no_secret(gateway.events, secret)
    assert_no_secret(gateway.events, upstream_key)
    replayed_state, replayed_timeline = replay(CHART, gateway.events.events)
    assert replayed_state.status() == final
    assert replayed_timeline.to_dict() == gateway.timeline.to_dict()


async def _run_gateway(gateway: Gateway, drain_in: str | None) -> str:
    from tests.support import hooks

    outcome = "served"

    async def run() -> None:
        nonlocal outcome
        async with anyio.create_task_group() as tg:
            try:
                await tg.start(gateway.run)
            except StartupError:
                outcome = "failed"
            except StartupAborted:
                outcome = "aborted"
            else:
                gateway.release()

    hooks.RECORD.clear()
    hooks.GATES.clear()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        if drain_in is not None:
            with anyio.fail_after(30):
                while f"gate:{drain_in}" not in hooks.RECORD and gateway.state not in (
                    "failed",
                    "stopped",
                ):
                    await anyio.sleep(0.001)
            gateway.request_drain()
    return outcome
