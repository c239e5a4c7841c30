"""Metrics of a process group: ``hypercorn --workers 2`` and prometheus_client's multiprocess mode.

Every worker writes its values to files named after its pid in ``PROMETHEUS_MULTIPROC_DIR``;
``/metrics`` on any worker reads them all. The directory is prepared at startup: the live-mode
gauge files of workers that are gone are removed, their counters stay in the group's totals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from routeiq.observability.metrics import prepare_multiprocess_dir, render_process_group
from tests.support.procs import GatewayProcess, gateway_env

CHAT = {"model": "routeiq-mock", "messages": [{"role": "user", "content": "hello"}]}
CHAT_SERIES = {"route": "/v1/chat/completions", "model": "routeiq-mock", "status_class": "2xx"}

# Writes a worker's metrics into the multiprocess dir, then stays alive if asked to.
WRITER = """
import sys
from pathlib import Path
from routeiq.observability.metrics import GatewayMetrics

metrics = GatewayMetrics(multiprocess_dir=Path(sys.argv[1]))
metrics.gateway_lifecycle_state.labels(state="serving").set(1)
metrics.gateway_requests_total.labels(
    route="/v1/models", model="other", status_class="2xx"
).inc(int(sys.argv[2]))
metrics.gateway_last_startup_duration_seconds.set(float(sys.argv[3]))
metrics.gateway_inflight_requests.inc()
print("written", flush=True)
if sys.argv[4] == "stay":
    sys.stdin.read()
"""

Sample = tuple[str, dict[str, str], float]


def samples(text: str) -> list[Sample]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(found: list[Sample], name: str, **labels: str) -> float | None:
    matching = [v for n, lab, v in found if n == name and lab == labels]
    assert len(matching) <= 1, matching
    return matching[0] if matching else None


def writer_env(directory: Path) -> dict[str, str]:
    return gateway_env({"PROMETHEUS_MULTIPROC_DIR": str(directory)})


def write_dead_worker(directory: Path, *, requests: int, startup_s: float) -> int:
    """A worker that wrote its metrics and exited: returns its (now dead) pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(requests), str(startup_s), "exit"],
        env=writer_env(directory),
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == b"written"
    return proc.pid


@pytest.fixture
def live_worker(tmp_path: Path) -> Any:
    """Factory: a worker process that wrote its metrics and stays alive until the test ends."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(directory: Path, *, requests: int, startup_s: float) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(requests), str(startup_s), "stay"],
            env=writer_env(directory),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"written"
        return proc.pid

    yield start
    for proc in procs:
        proc.communicate(timeout=30)


def test_prepare_removes_live_gauges_of_dead_workers_and_keeps_the_rest(
    tmp_path: Path, live_worker: Any
) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    dead = write_dead_worker(directory, requests=5, startup_s=3.0)
    alive = live_worker(directory, requests=2, startup_s=2.0)
    before = {p.name for p in directory.iterdir()}
    assert {f"gauge_livemax_{dead}.db", f"gauge_livesum_{dead}.db", f"counter_{dead}.db"} <= before

    assert prepare_multiprocess_dir(directory) == 1
    after = {p.name for p in directory.iterdir()}
    assert before - after == {f"gauge_livesum_{dead}.db", f"gauge_livemax_{dead}.db"}
    prepare_multiprocess_dir(directory)
    assert {p.name for p in directory.iterdir()} == after

    found = samples(render_process_group(directory)[0].decode())
    # Live workers per state: the dead worker's serving state is gone, and no pid label.
    assert alive != dead
    assert value(found, "gateway_lifecycle_state", state="serving") == 1.0
    assert not [n for n, labels, _ in found if "pid" in labels]
    assert value(found, "gateway_inflight_requests") == 1.0
    route = {"route": "/v1/models", "model": "other", "status_class": "2xx"}
    assert value(found, "gateway_requests_total", **route) == 7.0


def test_prepare_creates_a_missing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    assert prepare_multiprocess_dir(directory) == 0
    assert directory.is_dir()


def test_a_dead_workers_last_startup_duration_is_not_reported(
    tmp_path: Path, live_worker: Any
) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    write_dead_worker(directory, requests=1, startup_s=30.0)
    live_worker(directory, requests=1, startup_s=2.0)
    prepare_multiprocess_dir(directory)
    found = samples(render_process_group(directory)[0].decode())
    assert value(found, "gateway_last_startup_duration_seconds") == 2.0


# prometheus_client picks its value class (in memory, or files in PROMETHEUS_MULTIPROC_DIR) when
# it is first imported, from the env var alone.
CONFIG_DIR_ONLY = """
import sys
from pathlib import Path
from routeiq.observability.metrics import GatewayMetrics

metrics = GatewayMetrics(multiprocess_dir=Path(sys.argv[1]))
requests = metrics.gateway_requests_total
requests.labels(route="/v1/models", model="other", status_class="2xx").inc()
sys.stdout.write(metrics.render()[0].decode())
"""


def test_a_multiprocess_dir_from_config_alone_is_written_and_read(tmp_path: Path) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", CONFIG_DIR_ONLY, str(directory)],
        env=gateway_env(),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    route = {"route": "/v1/models", "model": "other", "status_class": "2xx"}
    assert value(samples(out), "gateway_requests_total", **route) == 1.0


# --- two hypercorn workers -----------------------------------------------------------------


READ_KEY = "multiprocess-read-key-51c0"


def worker_pid(client: httpx.Client) -> int:
    pid: int = client.get("/_lifecycle").json()["pid"]
    return pid


def on_each_worker(url: str, action: Any, *, times: int, budget: float = 60.0) -> dict[int, Any]:
    """Run ``action(client)`` on fresh connections until each of two workers ran it ``times``.

    One connection stays with the worker that accepted it, so the pid its ``/_lifecycle``
    reports is the worker that ran the action. The kernel spreads new connections over the
    workers; the loop is bounded by ``budget`` seconds.
    """
    results: dict[int, list[Any]] = {}
    deadline = time.monotonic() + budget
    while len(results) < 2 or any(len(r) < times for r in results.values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"connections never reached both workers: {list(results)}")
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        # The read key gets the full view: real pids in /_lifecycle and in /metrics labels.
        headers = {"authorization": f"Bearer {READ_KEY}"}
        with httpx.Client(base_url=url, limits=limits, timeout=30, headers=headers) as client:
            pid = worker_pid(client)
            if len(results.get(pid, [])) < times:
                result = action(client)
                assert worker_pid(client) == pid
                results.setdefault(pid, []).append(result)
    assert len(results) == 2, results
    return results


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_metrics_on_either_worker_report_the_whole_process_group(
    tmp_path: Path, start_gateway: Any
) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    # A worker of an earlier run: its live-mode gauges must go, its counters stay.
    dead = write_dead_worker(directory, requests=4, startup_s=1.0)
    gateway: GatewayProcess = start_gateway(
        "hypercorn",
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory), "ROUTEIQ_READ_KEY": READ_KEY},
        args=["--workers", "2"],
    )
    gateway.wait_ready(timeout=90)

    def chat(client: httpx.Client) -> int:
        return client.post("/v1/chat/completions", json=CHAT).status_code

    served = on_each_worker(gateway.url, chat, times=2)
    assert all(code == 200 for codes in served.values() for code in codes)
    sent = sum(len(codes) for codes in served.values())
    workers = set(served)
    assert dead not in workers and os.getpid() not in workers

    texts = on_each_worker(gateway.url, lambda c: c.get("/metrics").text, times=1)
    assert set(texts) == workers
    for pid, (text,) in texts.items():
        found = samples(text)
        assert value(found, "gateway_lifecycle_state", state="serving") == len(workers), (
            f"/metrics of worker {pid}"
        )
        assert not [n for n, labels, _ in found if "pid" in labels]
        assert not [n for n, _, _ in found if n.endswith("_created")]
        # Initialised by every worker, summed: present at 0 before any failure.
        assert value(found, "gateway_startup_failures_total", phase="patch") == 0
        start = value(found, "gateway_start_time_seconds")
        assert start is not None and start <= time.time()
        assert value(found, "gateway_requests_total", **CHAT_SERIES) == sent
        assert value(found, "gateway_startup_duration_seconds_count") == 2
        assert value(found, "gateway_inflight_requests") == 0
        assert value(found, "leader_election_status") is not None
        route = {"route": "/v1/models", "model": "other", "status_class": "2xx"}
        assert value(found, "gateway_requests_total", **route) == 4
