"""Real process groups for the master's tests: the loopback upstream, ``routeiq serve --workers``
and a threaded client load that records every request's outcome."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.procs import BIN, REPO, GatewayProcess, free_port, gateway_env

MASTER_KEY = "sk-master-test-0123456789"
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}
Event = dict[str, Any]


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    """The OpenAI-compatible upstream of tests/support/upstream.py, as a process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream", "--port", "0"],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=gateway_env(),
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    assert url.startswith("http://"), url
    yield url
    proc.terminate()
    proc.wait(timeout=15)
    proc.stdout.close()


def write_config(tmp_path: Path, upstream: str, **routeiq: Any) -> Path:
    """``fast`` answers at once, ``slow`` after 1 s; events go to ``tmp_path/events.jsonl``."""
    base = {"api_base": upstream, "api_key": "sk-up"}
    data = {
        "model_list": [
            {"model_name": "fast", "litellm_params": {"model": "openai/gpt", **base}},
            {"model_name": "slow", "litellm_params": {"model": "openai/slow-1s+gpt", **base}},
        ],
        "routeiq": {
            "master_key": MASTER_KEY,
            "event_log": {"path": str(tmp_path / "events.jsonl")},
            "drain": {"delay_s": 1.0, "timeout_s": 20},
            **routeiq,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Group(GatewayProcess):
    events_path: Path = field(default=Path())

    def master_events(self) -> list[Event]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def wait_event(self, match: Callable[[Event], bool], timeout: float = 90.0) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.master_events():
                if match(event):
                    return event
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no such master event (exit {self.proc.poll()}):\n"
            + "\n".join(json.dumps(e) for e in self.master_events())
            + "\n"
            + self.output()
        )

    def wait_transition(self, to_state: str, after: int = -1, timeout: float = 90.0) -> Event:
        return self.wait_event(
            lambda e: e["kind"] == "transition" and e["to_state"] == to_state and e["seq"] > after,
            timeout,
        )

    def serving_pids(self) -> dict[str, int]:
        """Slot → pid of the worker currently serving it, from the master's events."""
        serving: dict[str, int] = {}
        for event in self.master_events():
            if event["kind"] == "worker" and event["trigger"] == "ready":
                serving[event["component"]] = event["attributes"]["pid"]
            elif (
                event["kind"] == "worker"
                and event["trigger"] == "exited"
                and serving.get(event["component"]) == event["attributes"]["pid"]
            ):
                del serving[event["component"]]
        return serving


@pytest.fixture
def start_group(tmp_path: Path) -> Iterator[Callable[..., Group]]:
    started: list[Group] = []

    def start(config: Path, *, workers: int = 2, extra: list[str] | None = None) -> Group:
        port = free_port()
        cmd = [str(BIN / "routeiq"), "serve", "--port", str(port), "--config", str(config)]
        group = Group(
            [*cmd, "--workers", str(workers), *(extra or [])],
            port,
            gateway_env(),
            tmp_path / f"group-{port}.log",
            events_path=tmp_path / "events.master.jsonl",
        )
        started.append(group)
        group.start()
        return group

    yield start
    for group in started:
        group.stop()


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None
    error: str | None = None


class Load:
    """``threads`` clients posting ``model`` in a loop, a new connection per request (as a load
    balancer's health-checked pool would), until stopped; every outcome is kept."""

    def __init__(self, url: str, model: str, threads: int = 4) -> None:
        self._url = f"{url}/v1/chat/completions"
        self._body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        self._stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        return self.outcomes

    def _run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(limits=limits, timeout=30, headers=AUTH) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status: int | None = client.post(self._url, json=self._body).status_code
                    error = None
                except httpx.HTTPError as exc:
                    status, error = None, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.outcomes.append(Outcome(started, time.monotonic(), status, error))

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_count(self, more: int, timeout: float = 60.0) -> None:
        target = self.count() + more
        deadline = time.monotonic() + timeout
        while self.count() < target:
            assert time.monotonic() < deadline, f"the load made no progress: {self.count()}"
            time.sleep(0.02)

    def wait_ok_after(self, started_after: float, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` requests that started after ``started_after`` have succeeded."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                ok = sum(1 for o in self.outcomes if o.started > started_after and o.status == 200)
            if ok >= count:
                return
            assert time.monotonic() < deadline, f"only {ok} requests succeeded since then"
            time.sleep(0.02)


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status != 200]


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` with these labels in an exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
