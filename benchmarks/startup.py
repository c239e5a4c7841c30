"""Startup benchmark: start the real server N times and time process start → ready.

For each run it starts ``hypercorn routeiq.app:app`` (or ``routeiq serve`` with
``--server serve``) on the embedded default config, polls ``/health/ready`` until it answers
200, reads ``/_lifecycle/startup`` and stops the server with SIGTERM. It prints one row per run
and the median time to ready with each phase's share of it ("before lifespan" is interpreter
start, imports and hypercorn's own setup, up to the gateway's first event).

    python benchmarks/startup.py --runs 7
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests package

from tests.support.procs import free_port

BIN = Path(sys.executable).parent
PHASES = ("configure", "observe", "patch", "serve")


def one_run(server: str) -> dict[str, Any]:
    port = free_port()
    if server == "serve":
        cmd = [str(BIN / "routeiq"), "serve", "--port", str(port)]
    else:
        cmd = [str(BIN / "hypercorn"), "routeiq.app:app", "--bind", f"127.0.0.1:{port}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEIQ_")}
    env["ROUTEIQ_LOG_LEVEL"] = "warning"
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=1.0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}")
                if time.perf_counter() - started > 120:
                    raise RuntimeError("server not ready after 120 s")
                try:
                    if client.get(f"{url}/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
            ready = time.perf_counter() - started
            timeline = client.get(f"{url}/_lifecycle/startup").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    phases = {p["name"]: p["duration_s"] for p in timeline["phases"]}
    components = {c["name"]: c["duration_s"] for c in timeline["components"]}
    return {
        "ready_s": ready,
        "gateway_s": timeline["total_s"],
        "before_s": ready - timeline["total_s"],
        "phases": phases,
        "components": components,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--server", choices=("hypercorn", "serve"), default="hypercorn")
    args = parser.parse_args()
    runs = []
    header = f"{'run':>3} {'ready s':>8} {'before':>8} " + " ".join(f"{p:>9}" for p in PHASES)
    print(f"server: {args.server}, {args.runs} runs, embedded default config")
    print(header)
    for index in range(1, args.runs + 1):
        run = one_run(args.server)
        runs.append(run)
        cells = " ".join(f"{run['phases'].get(p, 0.0):9.3f}" for p in PHASES)
        print(f"{index:>3} {run['ready_s']:8.3f} {run['before_s']:8.3f} {cells}")
    median_ready = statistics.median(r["ready_s"] for r in runs)
    print()
    print(f"median time to ready: {median_ready:.3f} s")
    print(f"{'part':<22} {'median s':>9} {'share':>7}")
    parts = {"before lifespan": [r["before_s"] for r in runs]}
    for phase in PHASES:
        parts[f"phase {phase}"] = [r["phases"].get(phase, 0.0) for r in runs]
    for name in ("config", "metrics", "logging", "tracing", "litellm", "router"):
        parts[f"  component {name}"] = [r["components"].get(name, 0.0) for r in runs]
    for name, values in parts.items():
        value = statistics.median(values)
        print(f"{name:<22} {value:9.3f} {value / median_ready:7.1%}")


if __name__ == "__main__":
    main()
