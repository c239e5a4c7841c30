"""Real server processes: draining on SIGTERM, failed startups, signals during startup."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.procs import GatewayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def write_config(tmp_path: Path, *, mock_delay: float = 0.0, **routeiq: Any) -> Path:
    params: dict[str, Any] = {"model": "openai/slow", "mock_response": "done", "api_key": "sk-up"}
    if mock_delay:
        params["mock_delay"] = mock_delay
    data = {
        "model_list": [{"model_name": "slow", "litellm_params": params}],
        "routeiq": {"event_log": {"path": str(tmp_path / "events.jsonl")}, **routeiq},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def transitions(tmp_path: Path) -> list[str]:
    return [
        f"{e['from_state']}->{e['to_state']}" for e in events(tmp_path) if e["kind"] == "transition"
    ]


def inflight(gateway: GatewayProcess) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("gateway_inflight_requests "):
            return float(line.split()[1])
    return 0.0


def wait_inflight(gateway: GatewayProcess, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while inflight(gateway) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} requests never got in flight")
        time.sleep(0.02)


def post_chat(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": "slow", **CHAT}, timeout=30)


def test_hypercorn_sigterm_lets_inflight_requests_finish(
    tmp_path: Path, start_gateway: Any
) -> None:
    gateway = start_gateway(
        "hypercorn", env={"ROUTEIQ_CONFIG": str(write_config(tmp_path, mock_delay=1.5))}
    )
    gateway.wait_ready()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post_chat, gateway.url) for _ in range(4)]
        wait_inflight(gateway, 4)
        gateway.signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json()["choices"][0]["message"]["content"] == "done" for r in responses)
    assert gateway.wait(30) == 0
    assert transitions(tmp_path)[-2:] == ["serving->draining", "draining->stopped"]


def test_serve_drains_readiness_first_then_closes_then_finishes(
    tmp_path: Path, start_gateway: Any
) -> None:
    config = write_config(tmp_path, mock_delay=3.0, drain={"delay_s": 1.5, "timeout_s": 20})
    gateway = start_gateway("serve", args=["--config", str(config)])
    gateway.wait_ready()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(post_chat, gateway.url) for _ in range(3)]
        wait_inflight(gateway, 3)
        gateway.signal(signal.SIGTERM)
        # During the drain delay the listener is open but readiness says go away.
        deadline = time.monotonic() + 1.0
        ready = httpx.get(f"{gateway.url}/health/ready", timeout=5)
        while ready.status_code == 200 and time.monotonic() < deadline:
            ready = httpx.get(f"{gateway.url}/health/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["state"] == "draining"
        assert httpx.get(f"{gateway.url}/health/live", timeout=5).status_code == 200
        # After the delay the listener closes while the slow requests are still running.
        deadline = time.monotonic() + 10
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                httpx.get(f"{gateway.url}/health/live", timeout=1)
                time.sleep(0.05)
            except httpx.ConnectError:
                refused = True
        assert refused, "the listener never closed"
        assert not any(f.done() for f in futures), (
            "in-flight requests ended before the listener closed"
        )
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 3
    assert gateway.wait(30) == 0
    assert transitions(tmp_path)[-2:] == ["serving->draining", "draining->stopped"]
    kinds = [(e["kind"], e.get("component")) for e in events(tmp_path)]
    drain_at = kinds.index(("transition", None), len(kinds) - 2)
    assert ("teardown", "router") in kinds[drain_at - 10 :], (
        "phases were not unwound after draining"
    )


def test_serve_with_bad_config_exits_2_with_readable_errors(
    tmp_path: Path, start_gateway: Any
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list:\n  - model_name: x\nrouteiq:\n  drain: {timeout_s: -1}\n")
    gateway = start_gateway("serve", args=["--config", str(bad)])
    assert gateway.wait(60) == 2
    out = gateway.output()
    assert "model_list[0].litellm_params: Field required" in out
    assert "routeiq.drain.timeout_s: Input should be greater than 0" in out
    assert "Traceback" not in out


def test_hypercorn_with_bad_config_reports_readably(tmp_path: Path, start_gateway: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list: []\n")
    # --workers 0 runs the app in hypercorn's own process, so our exit code is the process's.
    gateway = start_gateway("hypercorn", env={"ROUTEIQ_CONFIG": str(bad)}, args=["--workers", "0"])
    assert gateway.wait(60) == 2
    out = gateway.output()
    assert "routeiq: invalid configuration" in out and "model_list: must not be empty" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("phase", ["configure", "observe", "patch", "serve"])
def test_serve_failure_in_a_phase_unwinds_and_exits_nonzero(
    tmp_path: Path, start_gateway: Any, phase: str
) -> None:
    hooks = [
        {"phase": "configure", "call": "tests.support.hooks:record", "name": "c"},
        {"phase": "observe", "call": "tests.support.hooks:record", "name": "o"},
        {"phase": phase, "call": "tests.support.hooks:fail", "name": "boom"},
    ]
    record = tmp_path / "record.txt"
    config = write_config(tmp_path, hooks=hooks)
    gateway = start_gateway(
        "serve", args=["--config", str(config)], env={"ROUTEIQ_TEST_RECORD": str(record)}
    )
    assert gateway.wait(60) == 3
    out = gateway.output()
    assert f"startup failed in phase '{phase}'" in out and "injected failure" in out
    assert "Traceback" not in out
    steps = record.read_text().split()
    entered = ["enter:hook:c"] + (["enter:hook:o"] if phase != "configure" else [])
    assert steps == [*entered, *(s.replace("enter", "exit") for s in reversed(entered))]
    last = events(tmp_path)[-1]
    assert last["kind"] in ("teardown", "transition")
    failed = [
        e for e in events(tmp_path) if e["kind"] == "transition" and e["to_state"] == "failed"
    ]
    assert len(failed) == 1 and failed[0]["attributes"]["phase"] == phase


def test_serve_signal_during_startup_unwinds_and_exits_0(
    tmp_path: Path, start_gateway: Any
) -> None:
    hooks = [
        {"phase": "observe", "call": "tests.support.hooks:record", "name": "o"},
        {"phase": "patch", "call": "tests.support.hooks:slow", "name": "slow"},
    ]
    record = tmp_path / "record.txt"
    config = write_config(tmp_path, hooks=hooks)
    gateway = start_gateway(
        "serve",
        args=["--config", str(config)],
        env={"ROUTEIQ_TEST_RECORD": str(record), "ROUTEIQ_TEST_SLOW_S": "60"},
    )
    deadline = time.monotonic() + 60
    while not (record.exists() and "slow:hook:slow" in record.read_text()):
        assert time.monotonic() < deadline and gateway.proc.poll() is None, gateway.output()
        time.sleep(0.05)
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(30) == 0
    assert record.read_text().split() == ["enter:hook:o", "slow:hook:slow", "exit:hook:o"]
    assert transitions(tmp_path)[-2:] == ["observing->draining", "draining->stopped"]
