"""The event log: seq and time assignment, replaying subscribers, redaction, the JSONL sink,
and projections rebuilt from a recorded log."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from routeiq.errors import InvalidTransition
from routeiq.lifecycle.clock import ManualClock
from routeiq.lifecycle.events import Event, EventKind, EventLog, JsonlSink, Redactor, read_jsonl
from routeiq.lifecycle.projections import LifecycleProjection, StartupTimeline, replay, split_runs
from routeiq.lifecycle.statechart import Statechart
from tests.support.eventlog import ScriptedRun


@pytest.fixture(scope="module")
def chart() -> Statechart:
    return Statechart.load("gateway")


Run = ScriptedRun


def happy(run: Run) -> None:
    run.component("config", 0.25)
    run.fire("configure")
    run.component("metrics", 0.5)
    run.component("tracing", 0.125)
    run.fire("observe")
    run.component("router", 1.0)
    run.fire("patch")
    run.fire("serve", after=0.5)
    run.fire("drain", after=30.0)
    run.log.append(EventKind.TEARDOWN, component="router", duration_s=0.0)
    run.fire("stop", after=0.25)


def fails_in_patch(run: Run) -> None:
    run.component("config", 0.25)
    run.fire("configure")
    run.component("metrics", 0.5)
    run.fire("observe")
    run.component("router", 0.75, error="RuntimeError: boom")
    run.log.append(EventKind.TEARDOWN, component="metrics", duration_s=0.0)
    run.fire("fail", error="RuntimeError: boom", phase="patch")


def drained_while_starting(run: Run) -> None:
    run.component("config", 0.25)
    run.fire("configure")
    run.fire("observe", after=0.5)
    run.log.append(
        EventKind.COMPONENT, component="router", duration_s=0.0, ok=False, error="cancelled"
    )
    run.fire("drain", after=0.125)
    run.fire("stop")


SCENARIOS = {
    "happy": happy,
    "fails_in_patch": fails_in_patch,
    "drained_while_starting": drained_while_starting,
}


# --- EventLog ---


def test_append_assigns_seq_and_times_from_the_clock() -> None:
    clock = ManualClock(wall=1_000.0, monotonic=50.0)
    log = EventLog(clock, worker_id="w1", pid=4242)
    first = log.append(EventKind.CREATED, to_state="created")
    clock.advance(1.5)
    second = log.append(EventKind.COMPONENT, component="config", duration_s=1.5)
    clock.advance(0.25)
    third = log.append(EventKind.WARNING, attributes={"why": "test"})
    assert [(e.seq, e.wall_time, e.mono_time) for e in log.events] == [
        (0, 1_000.0, 50.0),
        (1, 1_001.5, 51.5),
        (2, 1_001.75, 51.75),
    ]
    assert log.events == (first, second, third)
    assert len(log) == 3
    assert {(e.worker_id, e.pid) for e in log.events} == {("w1", 4242)}
    assert second.to_dict() == {
        "seq": 1,
        "kind": "component",
        "wall_time": 1_001.5,
        "mono_time": 51.5,
        "worker_id": "w1",
        "pid": 4242,
        "trigger": None,
        "from_state": None,
        "to_state": None,
        "component": "config",
        "duration_s": 1.5,
        "ok": True,
        "error": None,
        "attributes": {},
    }


def test_events_are_immutable() -> None:
    event = EventLog(ManualClock(), worker_id="w", pid=1).append(
        EventKind.WARNING, attributes={"a": 1}
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.seq = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.attributes["a"] = 2  # type: ignore[index]


def test_unknown_kind_and_out_of_order_events_are_refused() -> None:
    log = EventLog(ManualClock(), worker_id="w", pid=1)
    with pytest.raises(ValueError, match="unknown event kind 'bogus'"):
        log.append("bogus")
    stray = Event(seq=3, kind=EventKind.WARNING, wall_time=0.0, mono_time=0.0, worker_id="w", pid=1)
    with pytest.raises(ValueError, match="event seq 3 out of order: expected 0"):
        log.extend_raw(stray)
    assert len(log) == 0


def test_subscribe_with_replay_sees_past_then_new_events_in_order() -> None:
    log = EventLog(ManualClock(), worker_id="w", pid=1)
    for name in ("a", "b"):
        log.append(EventKind.COMPONENT, component=name)
    seen: list[tuple[int, str | None]] = []
    log.subscribe(lambda e: seen.append((e.seq, e.component)))
    assert seen == [(0, "a"), (1, "b")]
    log.append(EventKind.COMPONENT, component="c")
    assert seen == [(0, "a"), (1, "b"), (2, "c")]


def test_subscribe_without_replay_sees_only_new_events() -> None:
    log = EventLog(ManualClock(), worker_id="w", pid=1)
    log.append(EventKind.COMPONENT, component="old")
    seen: list[str | None] = []
    log.subscribe(lambda e: seen.append(e.component), replay=False)
    assert seen == []
    log.append(EventKind.COMPONENT, component="new")
    assert seen == ["new"]


def test_subscribers_run_in_subscription_order_and_unsubscribe_stops_delivery() -> None:
    log = EventLog(ManualClock(), worker_id="w", pid=1)
    order: list[str] = []
    stop_first = log.subscribe(lambda e: order.append(f"first:{e.seq}"))
    log.subscribe(lambda e: order.append(f"second:{e.seq}"))
    log.append(EventKind.WARNING)
    stop_first()
    stop_first()  # idempotent
    log.append(EventKind.WARNING)
    assert order == ["first:0", "second:0", "second:1"]


def test_a_subscriber_may_unsubscribe_itself_while_being_fed() -> None:
    log = EventLog(ManualClock(), worker_id="w", pid=1)
    order: list[str] = []

    def once(event: Event) -> None:
        order.append(f"once:{event.seq}")
        stop()

    stop = log.subscribe(once, replay=False)
    log.subscribe(lambda e: order.append(f"other:{e.seq}"), replay=False)
    log.append(EventKind.WARNING)
    log.append(EventKind.WARNING)
    assert order == ["once:0", "other:0", "other:1"]


def test_a_failing_subscriber_is_not_hidden() -> None:
    log = EventLog(ManualClock(), worker_id="w", pid=1)

    def broken(event: Event) -> None:
        raise RuntimeError("projection bug")

    log.subscribe(broken)
    with pytest.raises(RuntimeError, match="projection bug"):
        log.append(EventKind.WARNING)


# --- redaction ---


def test_redactor_masks_longest_secret_first() -> None:
    redact = Redactor(["sk-abc", "sk-abc-123456", ""])
    assert redact("key sk-abc-123456 and sk-abc.") == "key *** and ***."
    redact.add(["hunter2"])
    assert redact("hunter2/sk-abc") == "***/***"
    assert redact.value(42) == 42
    assert redact.value(None) is None
    assert redact.value(True) is True


def test_log_masks_secrets_in_error_component_and_attributes() -> None:
    redactor = Redactor(["sk-master-1", "sk-master-1-long", "upstream-key"])
    log = EventLog(ManualClock(), worker_id="w", pid=1, redactor=redactor)
    event = log.append(
        EventKind.COMPONENT,
        component="hook:sk-master-1",
        ok=False,
        error="401 for key sk-master-1-long (also sk-master-1)",
        attributes={"upstream-key": "Bearer upstream-key", "n": 3, "flag": False, "none": None},
    )
    assert event.component == "hook:***"
    assert event.error == "401 for key *** (also ***)"
    assert dict(event.attributes) == {"***": "Bearer ***", "n": 3, "flag": False, "none": None}
    assert not any(s in json.dumps(event.to_dict()) for s in ("sk-master-1", "upstream-key"))


# --- JSONL sink ---


def recorded(
    chart: Statechart, path: Path, scenario: str, *, worker_id: str = "w1", pid: int = 111
) -> EventLog:
    clock = ManualClock()
    log = EventLog(clock, worker_id=worker_id, pid=pid)
    sink = JsonlSink(path)
    log.subscribe(sink)
    try:
        SCENARIOS[scenario](Run(chart, log, clock))
    finally:
        sink.close()
    return log


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_jsonl_round_trips_events_exactly(chart: Statechart, tmp_path: Path, scenario: str) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    log = recorded(chart, path, scenario)
    events = read_jsonl(path)
    assert [e.to_dict() for e in events] == [e.to_dict() for e in log.events]
    assert events == list(log.events)


def test_jsonl_sink_flushes_each_event_and_appends(chart: Statechart, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(ManualClock(), worker_id="w", pid=1)
    sink = JsonlSink(path)
    log.subscribe(sink)
    log.append(EventKind.CREATED, to_state="created")
    assert [e.seq for e in read_jsonl(path)] == [0]
    sink.close()
    sink.close()
    log.append(EventKind.WARNING)
    assert [e.seq for e in read_jsonl(path)] == [0]
    again = JsonlSink(path)
    again(log.events[1])
    again.close()
    assert [e.seq for e in read_jsonl(path)] == [0, 1]


LINE = {"seq": 2, "kind": "warning", "wall_time": 1, "mono_time": 1, "worker_id": "w", "pid": 1}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"seq": 2, "kind": ', "Expecting value"),
        (json.dumps({**LINE, "kind": "exploded"}), "unknown event kind 'exploded'"),
        (
            json.dumps({k: v for k, v in LINE.items() if k != "worker_id"}),
            "missing field 'worker_id'",
        ),
        (json.dumps({**LINE, "seq": "two"}), "invalid literal for int()"),
        (json.dumps({**LINE, "attributes": ["x"]}), "attributes must be an object"),
        ("[1, 2]", ""),
    ],
)
def test_malformed_line_names_file_and_line(
    chart: Statechart, tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "events.jsonl"
    recorded(chart, path, "happy")
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(2, "")  # blank lines are skipped but still counted
    lines.insert(3, line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"events\.jsonl:4: ") as caught:
        read_jsonl(path)
    assert str(caught.value).startswith(f"{path}:4: ")
    assert problem in str(caught.value)


# --- projections: live == replayed ---


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_replay_of_a_recorded_log_matches_the_live_projections(
    chart: Statechart, tmp_path: Path, scenario: str
) -> None:
    path = tmp_path / "events.jsonl"
    clock = ManualClock()
    log = EventLog(clock, worker_id="w1", pid=111)
    live_state, live_timeline = LifecycleProjection(chart), StartupTimeline()
    log.subscribe(live_state)
    log.subscribe(live_timeline)
    sink = JsonlSink(path)
    log.subscribe(sink)
    SCENARIOS[scenario](Run(chart, log, clock))
    sink.close()

    state, timeline = replay(chart, read_jsonl(path))
    assert state.status() == live_state.status()
    assert timeline.to_dict() == live_timeline.to_dict()
    assert state.transitions == live_state.transitions

    late_state, late_timeline = LifecycleProjection(chart), StartupTimeline()
    log.subscribe(late_state)
    log.subscribe(late_timeline)
    assert late_state.status() == live_state.status()
    assert late_timeline.to_dict() == live_timeline.to_dict()


def test_projections_of_the_happy_path(chart: Statechart, tmp_path: Path) -> None:
    state, timeline = replay(chart, recorded(chart, tmp_path / "e.jsonl", "happy").events)
    status = state.status()
    assert (status.state, status.ready, status.live, status.failed_phase, status.error) == (
        "stopped",
        False,
        True,
        None,
        None,
    )
    assert status.draining_since == 1000.0 + 2.375 + 30.0
    startup = timeline.to_dict()
    assert (startup["outcome"], startup["started_at"], startup["total_s"]) == (
        "serving",
        1_700_000_000.0,
        2.375,
    )
    assert [
        (p["name"], p["start_offset_s"], p["duration_s"], p["ok"]) for p in startup["phases"]
    ] == [
        ("configure", 0.0, 0.25, True),
        ("observe", 0.25, 0.625, True),
        ("patch", 0.875, 1.0, True),
        ("serve", 1.875, 0.5, True),
    ]
    assert [
        (c["name"], c["parent"], c["start_offset_s"], c["duration_s"])
        for c in startup["components"]
    ] == [
        ("config", "configure", 0.0, 0.25),
        ("metrics", "observe", 0.25, 0.5),
        ("tracing", "observe", 0.75, 0.125),
        ("router", "patch", 0.875, 1.0),
    ]


def test_projections_of_a_failed_startup(chart: Statechart, tmp_path: Path) -> None:
    state, timeline = replay(chart, recorded(chart, tmp_path / "e.jsonl", "fails_in_patch").events)
    status = state.status()
    assert (status.state, status.ready, status.live, status.failed_phase, status.error) == (
        "failed",
        False,
        False,
        "patch",
        "RuntimeError: boom",
    )
    startup = timeline.to_dict()
    assert (startup["outcome"], startup["total_s"]) == ("failed", 1.5)
    assert [(p["name"], p["duration_s"], p["ok"], p["error"]) for p in startup["phases"]] == [
        ("configure", 0.25, True, None),
        ("observe", 0.5, True, None),
        ("patch", 0.75, False, "RuntimeError: boom"),
    ]
    assert [(c["name"], c["parent"], c["ok"], c["error"]) for c in startup["components"]] == [
        ("config", "configure", True, None),
        ("metrics", "observe", True, None),
        ("router", "patch", False, "RuntimeError: boom"),
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda e: (
                dataclasses.replace(e, trigger="serve", to_state="serving") if e.seq == 2 else e
            ),
            "trigger 'serve' is not allowed in state 'created'",
        ),
        (
            lambda e: dataclasses.replace(e, to_state="patched") if e.seq == 2 else e,
            "trigger 'configure' is not allowed in state 'created'",
        ),
        (
            lambda e: dataclasses.replace(e, from_state="configured") if e.seq == 2 else e,
            "trigger \"configure (recorded from 'configured')\" is not allowed in state 'created'",
        ),
    ],
)
def test_replay_rejects_an_impossible_sequence(
    chart: Statechart, mutate: Callable[[Event], Event], message: str
) -> None:
    clock = ManualClock()
    log = EventLog(clock, worker_id="w", pid=1)
    happy(Run(chart, log, clock))
    events = [mutate(e) for e in log.events]
    with pytest.raises(InvalidTransition, match=re.escape(message)):
        replay(chart, events)


def test_replay_rejects_a_seq_gap(chart: Statechart) -> None:
    clock = ManualClock()
    log = EventLog(clock, worker_id="w", pid=1)
    happy(Run(chart, log, clock))
    events = [e for e in log.events if e.seq != 3]
    with pytest.raises(ValueError, match="event seq 4 out of order: expected 3"):
        replay(chart, events)


# --- split_runs ---


def test_split_runs_separates_workers_and_restarts(chart: Statechart, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    clock_a, clock_b = ManualClock(), ManualClock()
    log_a = EventLog(clock_a, worker_id="a", pid=10)
    log_b = EventLog(clock_b, worker_id="b", pid=20)
    sink = JsonlSink(path)
    log_a.subscribe(sink)
    log_b.subscribe(sink)
    run_a, run_b = Run(chart, log_a, clock_a), Run(chart, log_b, clock_b)
    run_a.fire("configure")
    run_b.fire("configure")
    run_b.fire("fail", error="boom", phase="observe")
    run_a.fire("observe")
    sink.close()
    # Worker a restarts with the same id and pid: its seq starts again at 0.
    recorded(chart, path, "happy", worker_id="a", pid=10)

    runs = split_runs(read_jsonl(path))
    assert [(r[0].worker_id, r[0].pid, [e.seq for e in r]) for r in runs] == [
        ("a", 10, [0, 1, 2]),
        ("b", 20, [0, 1, 2]),
        ("a", 10, list(range(12))),
    ]
    assert [replay(chart, r)[0].state for r in runs] == ["observing", "failed", "stopped"]
