"""Process-group benchmark: ``routeiq serve --workers N`` against the loopback upstream.

Prints one table per section:

- ``load``: 3 workers under ``wrk -t2 -c400 -d30s`` (Debian's ``wrk``): req/s, p50/p99, errors,
  and each worker's share of the requests and its own p99 (from that worker's files in the
  group's multiprocess metrics directory; p99 interpolated in the latency histogram's buckets).
- ``memory``: RSS, PSS and USS (``/proc/<pid>/smaps_rollup``) of the master and each worker for
  N = 1, 2, 4, after 200 requests, beside a single-process ``routeiq serve``.
- ``ready``: time from exec to every worker ready for N = 1 and 4, against the floor measured in
  the same run (a bare ``python -c "import litellm"``), and how long a SIGKILLed worker takes to
  be replaced and ready again.
- ``profile``: a single-process ``routeiq serve`` under cProfile at concurrency 32; the top
  entries by own time.

    python benchmarks/workers.py [--sections load,memory,ready,profile] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo's tests and benchmarks

from overhead import CHAT, MASTER_KEY, load  # noqa: E402  (this folder: the same load loop)

from tests.support.procs import free_port, gateway_env, wait_http_ready  # noqa: E402

BIN = Path(sys.executable).parent
LATENCY_BUCKETS_ROUTE = "/v1/chat/completions"


@contextmanager
def upstream() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream", "--port", "0"],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=gateway_env(),
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()


def write_config(directory: Path, upstream_url: str) -> Path:
    data = {
        "model_list": [
            {
                "model_name": "bench",
                "litellm_params": {"model": "openai/gpt", "api_base": upstream_url, "api_key": "k"},
            }
        ],
        "routeiq": {
            "master_key": MASTER_KEY,
            "log_level": "warning",
            "event_log": {"path": str(directory / "events.jsonl")},
            "metrics": {"multiproc_dir": str(directory / "metrics")},
            "drain": {"delay_s": 0.2, "timeout_s": 10},
        },
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Group:
    """A running ``routeiq serve`` (with a master when ``workers`` is not None)."""

    def __init__(self, directory: Path, config: Path, workers: int | None) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(BIN / "routeiq"), "serve", "--port", str(self.port), "--config", str(config)]
        if workers is not None:
            cmd += ["--workers", str(workers), "--master"]
        for stale in directory.glob("events*.jsonl"):
            stale.unlink()
        self.started_wall = time.time()
        self.proc = subprocess.Popen(
            cmd,
            env=gateway_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def events(self) -> list[dict[str, Any]]:
        path = self.directory / "events.master.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_event(self, match: Any, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if match(event):
                    return event
            if self.proc.poll() is not None:
                raise RuntimeError(f"the group exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("timed out waiting for a master event")

    def wait_running(self) -> float:
        """Seconds from exec to the master's ``running`` transition."""
        event = self.wait_event(lambda e: e["kind"] == "transition" and e["to_state"] == "running")
        return float(event["wall_time"]) - self.started_wall

    def wait_single_ready(self) -> None:
        wait_http_ready(self.url)

    def worker_pids(self) -> dict[str, int]:
        serving: dict[str, int] = {}
        for event in self.events():
            if event["kind"] != "worker":
                continue
            if event["trigger"] == "ready":
                serving[event["component"]] = event["attributes"]["pid"]
            elif (
                event["trigger"] == "exited"
                and serving.get(event["component"]) == (event["attributes"]["pid"])
            ):
                del serving[event["component"]]
        return serving

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def smaps(pid: int) -> dict[str, float]:
    """RSS, PSS and USS in MiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                values[parts[0][:-1]] = int(parts[1])
    uss = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return {"rss": values["Rss"] / 1024, "pss": values["Pss"] / 1024, "uss": uss / 1024}


def warm(url: str, requests: int = 200) -> None:
    _done, errors = asyncio.run(_count_load(url, 8, requests))
    if errors:
        raise RuntimeError(f"{errors} errors while warming up")


async def _count_load(url: str, concurrency: int, requests: int) -> tuple[int, int]:
    import aiohttp

    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    done = errors = 0
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one() -> None:
            nonlocal done, errors
            while done + errors < requests:
                async with session.post(f"{url}/v1/chat/completions", json=CHAT) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                    else:
                        errors += 1

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return done, errors


# --- load ------------------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def _wrk(url: str, seconds: int, directory: Path) -> dict[str, float]:
    script = directory / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=json.dumps(CHAT), key=MASTER_KEY))
    out = subprocess.run(
        ["wrk", "-t2", "-c400", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}  # type: ignore[index]
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out)
        if match:
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[match[2]]
            result[f"p{pct}_ms"] = float(match[1]) * scale
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = float(non2xx[1]) if non2xx else 0.0
    result["socket_errors"] = float(sum(int(g) for g in sock.groups())) if sock else 0.0
    result["requests"] = float(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    return result


def _worker_stats(metrics_dir: Path, pid: int) -> tuple[float, float]:
    """(requests, p99 seconds) of one worker, from its own multiprocess files."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.parser import text_string_to_metric_families

    with tempfile.TemporaryDirectory() as alone:
        for name in (f"counter_{pid}.db", f"histogram_{pid}.db"):
            if (metrics_dir / name).exists():
                shutil.copy(metrics_dir / name, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=alone)  # type: ignore[no-untyped-call]
        text = generate_latest(registry).decode()
    count, buckets = 0.0, []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("route") != LATENCY_BUCKETS_ROUTE:
                continue
            if s.name == "gateway_requests_total":
                count += s.value
            elif s.name == "gateway_request_duration_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    return count, _quantile(0.99, sorted(buckets))


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / max(cumulative - lower_count, 1e-9)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, cumulative
    return lower_bound


def section_load(directory: Path, upstream_url: str, seconds: int) -> None:
    config = write_config(directory, upstream_url)
    group = Group(directory, config, workers=3)
    try:
        group.wait_running()
        warm(group.url)
        before = {
            pid: _worker_stats(directory / "metrics", pid) for pid in group.worker_pids().values()
        }
        result = _wrk(f"{group.url}/v1/chat/completions", seconds, directory)
        pids = group.worker_pids()
        stats = {}
        for slot, pid in sorted(pids.items()):
            count, p99 = _worker_stats(directory / "metrics", pid)
            stats[slot] = (pid, count - before.get(pid, (0.0, 0.0))[0], p99)
    finally:
        group.stop()
    total = sum(count for _, count, _ in stats.values()) or 1.0
    print(f"\n## Load: 3 workers, wrk -t2 -c400 -d{seconds}s, loopback upstream\n")
    print("| req/s | p50 ms | p99 ms | p99/p50 | non-2xx | socket errors | requests |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    p50, p99 = result.get("p50_ms", float("nan")), result.get("p99_ms", float("nan"))
    print(
        f"| {result['rps']:.0f} | {p50:.1f} | {p99:.1f} | {p99 / p50:.2f} | "
        f"{result['errors']:.0f} | {result['socket_errors']:.0f} | {result['requests']:.0f} |"
    )
    print("\n| worker | pid | requests | share (1/N = 33.3 %) | own p99 ms (histogram) |")
    print("|---|---:|---:|---:|---:|")
    for slot, (pid, count, worker_p99) in stats.items():
        share = 100 * count / total
        print(f"| {slot} | {pid} | {count:.0f} | {share:.1f} % | {worker_p99 * 1000:.1f} |")


# --- memory ----------------------------------------------------------------------------------


def section_memory(directory: Path, upstream_url: str) -> None:
    config = write_config(directory, upstream_url)
    print("\n## Memory (MiB, /proc/<pid>/smaps_rollup, after 200 requests)\n")
    print("| setup | process | RSS | PSS | USS |")
    print("|---|---|---:|---:|---:|")
    single = Group(directory, config, workers=None)
    try:
        single.wait_single_ready()
        warm(single.url)
        alone = smaps(single.proc.pid)
    finally:
        single.stop()
    rss, pss, uss = alone["rss"], alone["pss"], alone["uss"]
    print(f"| single process | routeiq serve | {rss:.0f} | {pss:.0f} | {uss:.0f} |")
    totals: dict[int, float] = {}
    for n in (1, 2, 4):
        group = Group(directory, config, workers=n)
        try:
            group.wait_running()
            warm(group.url)
            rows = [("master", smaps(group.proc.pid))]
            rows += [(slot, smaps(pid)) for slot, pid in sorted(group.worker_pids().items())]
        finally:
            group.stop()
        for name, m in rows:
            print(f"| N={n} | {name} | {m['rss']:.0f} | {m['pss']:.0f} | {m['uss']:.0f} |")
        totals[n] = sum(m["pss"] for _, m in rows)
        print(f"| N={n} | **group PSS** | | **{totals[n]:.0f}** | |")
    print("\n| N | group PSS | added per worker beyond the first | vs single process PSS |")
    print("|---:|---:|---:|---:|")
    for n in (2, 4):
        added = (totals[n] - totals[1]) / (n - 1)
        print(f"| {n} | {totals[n]:.0f} | {added:.0f} | {100 * added / alone['pss']:.0f} % |")


# --- time to ready ---------------------------------------------------------------------------


def _floor() -> float:
    env = {**gateway_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import litellm"], env=env, check=True, cwd=REPO)
    return time.perf_counter() - started


def section_ready(directory: Path, upstream_url: str) -> None:
    config = write_config(directory, upstream_url)
    floors = [_floor() for _ in range(3)]
    floor = sorted(floors)[1]
    ready: dict[int, list[float]] = {1: [], 4: []}
    replaced: list[float] = []
    backoffs: list[float] = []  # the master's restart backoff before each replacement
    for n in (1, 4, 1, 4):
        group = Group(directory, config, workers=n)
        try:
            ready[n].append(group.wait_running())
            if n == 4 and not replaced:
                for _ in range(3):
                    pids = group.worker_pids()
                    victim = pids["worker-1"]
                    seen = group.events()[-1]["seq"]
                    killed = time.time()
                    os.kill(victim, signal.SIGKILL)
                    event = group.wait_event(
                        lambda e, seen=seen: (
                            e["seq"] > seen
                            and e["trigger"] == "ready"
                            and e["component"] == "worker-1"
                        )
                    )
                    replaced.append(float(event["wall_time"]) - killed)
                    (restarting,) = [
                        e
                        for e in group.events()
                        if e["seq"] > seen
                        and e["trigger"] == "restarting"
                        and e["component"] == "worker-1"
                    ]
                    backoffs.append(float(restarting["attributes"]["delay_s"]))
        finally:
            group.stop()
    print('\n## Time to ready (s), floor = median of 3 × python -c "import litellm"\n')
    print("| what | runs | best | floor | best − floor | target |")
    print("|---|---|---:|---:|---:|---|")
    print(
        f"| floor | {', '.join(f'{f:.2f}' for f in floors)} | {min(floors):.2f} | {floor:.2f} | | |"
    )
    for n, target in ((1, 0.3), (4, 0.6)):
        best = min(ready[n])
        runs = ", ".join(f"{r:.2f}" for r in ready[n])
        over = best - floor
        print(
            f"| N={n} all ready | {runs} | {best:.2f} | {floor:.2f} | {over:+.2f} | ≤ +{target} |"
        )
    runs = ", ".join(f"{r:.2f}" for r in replaced)
    print(f"| SIGKILLed worker ready again | {runs} | {min(replaced):.2f} | | | ≤ 0.5 |")
    runs = ", ".join(f"{r - b:.2f}" for r, b in zip(replaced, backoffs, strict=True))
    print(f"| the same, less the restart backoff | {runs} | | | | |")
    print(
        "\n(the three kills fall in one restart-intensity window, so the master backs off "
        f"{', '.join(f'{b:g}' for b in backoffs)} s before each replacement)"
    )


# --- profile ---------------------------------------------------------------------------------


# Runs ``routeiq serve`` with a profiler that SIGUSR1 enables and SIGUSR2 stops and saves, so
# that the profile holds the load window only (signal handlers run on the event loop's thread).
PROFILED_SERVE = """
import cProfile, signal, sys
from routeiq.cli import main
profiler = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
def save(*_):
    profiler.disable()
    profiler.dump_stats(sys.argv[1])
signal.signal(signal.SIGUSR2, save)
sys.exit(main(sys.argv[2:]))
"""


def section_profile(directory: Path, upstream_url: str, seconds: int) -> None:
    config = write_config(directory, upstream_url)
    out = directory / "worker.prof"
    port = free_port()
    args = ["serve", "--port", str(port), "--config", str(config)]
    proc = subprocess.Popen(
        [sys.executable, "-c", PROFILED_SERVE, str(out), *args],
        env=gateway_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(url)
        warm(url)
        proc.send_signal(signal.SIGUSR1)
        latencies, errors = asyncio.run(load(f"{url}/v1", 32, seconds))
        proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    print(f"\n## Profile: one worker (routeiq serve) under cProfile, c32 for {seconds}s")
    print(f"({len(latencies)} requests, {errors} errors; only the load window is profiled;")
    print("cProfile slows the worker down, the shares are what matters)\n")
    stats = pstats.Stats(str(out))
    total = stats.total_tt  # type: ignore[attr-defined]
    items = stats.stats.items()  # type: ignore[attr-defined]
    for title, key in (("own time", 2), ("cumulative time", 3)):
        rows = sorted(items, key=lambda kv: kv[1][key], reverse=True)
        print(f"\nTop 20 by {title} (total own time {total:.2f} s):\n")
        print("| own s | cumulative s | share of total | calls | function |")
        print("|---:|---:|---:|---:|---|")
        for (path, line, name), (_cc, calls, own, cum, _callers) in rows[:20]:
            where = path.split("site-packages/")[-1].split("/routeiq/")[-1]
            share = 100 * (own if key == 2 else cum) / total
            print(f"| {own:.2f} | {cum:.2f} | {share:.1f} % | {calls} | `{name}` {where}:{line} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="load,memory,ready,profile")
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    sections = args.sections.split(",")
    with tempfile.TemporaryDirectory(prefix="routeiq-bench-") as tmp, upstream() as up:
        directory = Path(tmp)
        if "load" in sections:
            section_load(directory, up, args.seconds)
        if "memory" in sections:
            section_memory(directory, up)
        if "ready" in sections:
            section_ready(directory, up)
        if "profile" in sections:
            section_profile(directory, up, min(args.seconds, 15))


if __name__ == "__main__":
    main()
