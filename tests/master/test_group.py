"""``routeiq serve --workers N``: a real master with real workers on the loopback upstream."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from routeiq.lifecycle.events import read_jsonl
from routeiq.lifecycle.projections import split_runs

from .conftest import AUTH, Load, failures, metric_value, write_config

# A SIGHUP starts fresh interpreters (each imports litellm: ~3 s quiet, far more on a busy box).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def spawned_pids(events: list[dict[str, Any]]) -> list[int]:
    return [
        e["attributes"]["pid"]
        for e in events
        if e["kind"] == "worker" and e["trigger"] == "spawned"
    ]


def test_counts_sum_exactly_and_sigterm_drains_every_worker(
    tmp_path: Path, upstream_url: str, start_group: Any
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left over from a previous run")
    config = write_config(tmp_path, upstream_url, metrics={"multiproc_dir": str(metrics_dir)})
    group = start_group(config, workers=2)
    group.wait_transition("running")
    assert not (metrics_dir / "counter_999999.db").exists(), "the master did not start fresh"

    # Before each fork the master held one thread, one socket (the listener), no event loop.
    spawned = [e for e in group.master_events() if e["trigger"] == "spawned"]
    assert len(spawned) == 2
    for event in spawned:
        attrs = event["attributes"]
        assert (attrs["master_threads"], attrs["master_sockets"], attrs["master_epoll_fds"]) == (
            1,
            1,
            0,
        ), attrs
        assert attrs["mode"] == "fork"

    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), headers=AUTH) as client:
        for _ in range(300):
            response = client.post(
                f"{group.url}/v1/chat/completions",
                json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert response.status_code == 200, response.text
    # Scraped like Prometheus does, without a key (the master key is no read key: 401).
    text = httpx.get(f"{group.url}/metrics").text
    route = {"route": "/v1/chat/completions", "status_class": "2xx"}
    assert metric_value(text, "gateway_requests_total", **route) == 300
    assert metric_value(text, "leader_election_status") == 1
    assert metric_value(text, "gateway_workers", state="serving") == 2
    assert metric_value(text, "gateway_worker_restarts_total") == 0
    assert metric_value(text, "gateway_gc_pause_seconds_count") > 0
    # Both workers served: each one's own files hold part of the 300.
    per_worker = {}
    for pid in spawned_pids(group.master_events()):
        alone = tmp_path / f"worker-{pid}"
        alone.mkdir()
        shutil.copy(metrics_dir / f"counter_{pid}.db", alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        per_worker[pid] = metric_value(
            generate_latest(registry).decode(), "gateway_requests_total", **route
        )
    assert sum(per_worker.values()) == 300 and all(per_worker.values()), per_worker

    # SIGTERM under load: readiness turns 503, the load stops (as a load balancer would),
    # and every request that was accepted finishes.
    with Load(group.url, "slow", threads=4) as load:
        deadline = time.monotonic() + 30
        while metric_value(httpx.get(f"{group.url}/metrics").text, "gateway_inflight_requests") < 4:
            assert time.monotonic() < deadline, "the slow requests never got in flight"
            time.sleep(0.05)
        group.signal(signal.SIGTERM)
        while httpx.get(f"{group.url}/health/ready", timeout=5).status_code == 200:
            assert time.monotonic() < deadline + 10, "readiness never turned 503"
        outcomes = load.stop()
    assert outcomes and failures(outcomes) == []
    assert group.wait(60) == 0, group.output()
    transitions = [e["to_state"] for e in group.master_events() if e["kind"] == "transition"]
    assert transitions == ["running", "draining", "stopped"]
    exits = [e for e in group.master_events() if e["trigger"] == "exited"]
    assert len(exits) == 2 and all(e["ok"] and e["attributes"]["code"] == 0 for e in exits)
    # No process of the group is left, and the workers' own event log still replays.
    assert not [pid for pid in spawned_pids(group.master_events()) if alive(pid)]
    runs = split_runs(read_jsonl(tmp_path / "events.jsonl"))
    assert len(runs) == 2
    assert all(run[-1].to_state == "stopped" or run[-1].kind == "teardown" for run in runs)


def test_sigkill_is_replaced_and_sighup_replaces_every_worker_under_load(
    tmp_path: Path, upstream_url: str, start_group: Any
) -> None:
    group = start_group(write_config(tmp_path, upstream_url), workers=2)
    group.wait_transition("running")
    before = group.serving_pids()
    assert set(before) == {"worker-0", "worker-1"}

    with Load(group.url, "fast", threads=4) as load:
        load.wait_count(20)
        victim = before["worker-1"]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        exited = group.wait_event(
            lambda e: e["trigger"] == "exited" and e["attributes"]["pid"] == victim
        )
        assert exited["attributes"]["signal"] == "SIGKILL" and not exited["ok"]
        restarting = group.wait_event(lambda e: e["trigger"] == "restarting")
        assert restarting["seq"] > exited["seq"]
        ready = group.wait_event(
            lambda e: (
                e["trigger"] == "ready"
                and e["component"] == "worker-1"
                and e["attributes"]["pid"] != victim
            )
        )
        # Served by the survivor and the replacement, well after the kill.
        load.wait_ok_after(killed_at + 1.0, 20)
        outcomes = list(load.outcomes)
    # Only requests the killed worker had accepted may fail; everything else succeeded.
    lost = failures(outcomes)
    assert len(lost) <= 4, lost
    assert all(o.status is None and o.started < killed_at + 1.0 for o in lost), lost
    assert [o for o in outcomes if o.started > killed_at + 1.0 and o.status == 200]
    assert (
        metric_value(httpx.get(f"{group.url}/metrics").text, "gateway_worker_restarts_total") == 1
    )

    replaced = group.serving_pids()
    with Load(group.url, "fast", threads=2) as load:
        load.wait_count(20)
        reload_seq = group.master_events()[-1]["seq"]
        group.signal(signal.SIGHUP)
        group.wait_transition("reloading", after=reload_seq)
        reloaded = group.wait_transition("running", after=reload_seq, timeout=420)
        load.wait_count(20)
        outcomes = load.stop()
    assert reloaded["ok"], reloaded
    assert failures(outcomes) == [], failures(outcomes)[:5]
    after = group.serving_pids()
    assert set(after) == {"worker-0", "worker-1"}
    assert not set(after.values()) & set(replaced.values()), (replaced, after)
    new_spawns = [
        e for e in group.master_events() if e["trigger"] == "spawned" and e["seq"] > reload_seq
    ]
    assert [e["attributes"]["mode"] for e in new_spawns] == ["exec", "exec"]
    # Each new worker was ready before its predecessor drained and exited cleanly.
    for slot, pid in after.items():
        old = replaced[slot]
        old_exit = group.wait_event(
            lambda e, old=old: e["trigger"] == "exited" and e["attributes"]["pid"] == old
        )
        ready_seq = next(
            e["seq"]
            for e in group.master_events()
            if e["trigger"] == "ready" and e["attributes"]["pid"] == pid
        )
        assert old_exit["seq"] > ready_seq and old_exit["ok"], old_exit
    group.signal(signal.SIGTERM)
    assert group.wait(60) == 0, group.output()
    assert ready["duration_s"] > 0


def test_restart_intensity_exceeded_drains_and_exits_3(
    tmp_path: Path, upstream_url: str, start_group: Any
) -> None:
    config = write_config(tmp_path, upstream_url, supervisor={"max_restarts": 0, "window_s": 60})
    group = start_group(config, workers=1, extra=["--master"])
    group.wait_transition("running")
    (pid,) = group.serving_pids().values()
    os.kill(pid, signal.SIGKILL)
    assert group.wait(60) == 3
    out = group.output()
    assert (
        f"routeiq: worker 0 (pid {pid}) was killed by signal SIGKILL; 1 deaths within 60s "
        "exceed routeiq.supervisor.max_restarts=0"
    ) in out
    assert "Traceback" not in out
    transitions = [e["to_state"] for e in group.master_events() if e["kind"] == "transition"]
    assert transitions == ["running", "draining", "failed"]


def test_a_worker_whose_first_startup_fails_ends_the_group_with_its_error(
    tmp_path: Path, upstream_url: str, start_group: Any
) -> None:
    hooks = [{"phase": "patch", "call": "tests.support.hooks:fail", "name": "boom"}]
    group = start_group(write_config(tmp_path, upstream_url, hooks=hooks), workers=2)
    assert group.wait(90) == 3
    out = group.output()
    assert "failed to start: startup failed in phase 'patch'" in out and "injected failure" in out
    assert out.count("failed to start") == 1
    assert "Traceback" not in out
    assert not [pid for pid in spawned_pids(group.master_events()) if alive(pid)]


def test_an_invalid_config_exits_2_before_any_worker_exists(
    tmp_path: Path, start_group: Any
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list: []\nrouteiq:\n  event_log: {path: events.jsonl}\n")
    group = start_group(bad, workers=3)
    assert group.wait(60) == 2
    out = group.output()
    assert "routeiq: invalid configuration" in out and "model_list: must not be empty" in out
    assert "Traceback" not in out and "created" not in out
    assert group.master_events() == []
