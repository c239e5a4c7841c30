"""Breaks the HA stack (deploy/compose/docker-compose.ha.yml) on purpose and prints a table.

Run by ``scripts/e2e-deploy`` once the engine, the base image and the wheelhouse exist. It
builds two image tags, brings up etcd, the fake upstream, three gateways and Prometheus, drives
traffic through every replica the way a load balancer would (round-robin over the replicas whose
``/health/ready`` answered 200 within the last poll), and runs, in order:

1. leader      exactly one leader key in etcd; a config reload published by it reaches all
               replicas.
2. rolling     rolling update to a new image tag, one replica at a time: 0 failed requests.
3. kill        ``docker kill`` of a random replica, 10 times: requests to the others never fail.
4. partition   ``docker network disconnect`` of the leader: a new leader within lease TTL + 1 s,
               the old one steps down before its lease expires, and a leader-only write it
               attempts after reconnecting is refused by fencing.
5. etcd-down   etcd stopped for 30 s: 0 failed requests; leadership recovers.
6. rollback    rolling update back to the first tag: 0 failed requests, published config kept.

Leadership is observed with ``etcdctl`` against etcd's published loopback port, never through
the gateways' own report. Only loopback and the stack's own container network carry traffic.
The process exits 1 if any scenario fails or cannot run; it never passes without running them.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose" / "docker-compose.ha.yml"
PROJECT = "routeiq-e2e"
REPLICAS = ("gw1", "gw2", "gw3")
LEADER_KEY = "/routeiq/leader"
CONFIG_KEY = "/routeiq/config"
LEASE_TTL_S = 5.0  # deploy/compose/config/routeiq.yaml
MODEL = "gpt-4o-mini"


class ScenarioFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise ScenarioFailed(f"{' '.join(cmd[:4])}… exited {done.returncode}: {done.stderr[-500:]}")
    return done.stdout


async def arun(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True) -> str:
    return await anyio.to_thread.run_sync(lambda: run(cmd, env=env, check=check))


# --- traffic ------------------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    ok: bool
    started: float
    ended: float
    detail: str = ""


@dataclass
class Traffic:
    """A load balancer and its clients: round-robin over ready replicas, results recorded."""

    backends: dict[str, str]
    master_key: str
    workers: int = 4
    results: list[Result] = field(default_factory=list)
    ready: dict[str, bool] = field(default_factory=dict)
    no_backend: int = 0
    inflight: dict[str, int] = field(default_factory=dict)

    def mark(self) -> int:
        return len(self.results)

    def since(self, mark: int) -> list[Result]:
        return self.results[mark:]

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            for name in self.backends:
                self.ready.setdefault(name, False)
                self.inflight[name] = 0
                tg.start_soon(self._poll, name, stop)
            rr = itertools.cycle(self.backends)
            async with httpx.AsyncClient(timeout=15.0) as client:
                for _ in range(self.workers):
                    tg.start_soon(self._client_loop, client, rr, stop)
                await stop.wait()
                tg.cancel_scope.cancel()

    async def _poll(self, name: str, stop: anyio.Event) -> None:
        url = self.backends[name] + "/health/ready"
        async with httpx.AsyncClient(timeout=1.0) as client:
            while not stop.is_set():
                try:
                    self.ready[name] = (await client.get(url)).status_code == 200
                except httpx.HTTPError:
                    self.ready[name] = False
                await anyio.sleep(0.2)

    async def _client_loop(
        self, client: httpx.AsyncClient, rr: Iterator[str], stop: anyio.Event
    ) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "e2e"}]}
        headers = {"Authorization": f"Bearer {self.master_key}"}
        while not stop.is_set():
            name = next(
                (n for n in itertools.islice(rr, len(self.backends)) if self.ready[n]), None
            )
            if name is None:
                self.no_backend += 1
                await anyio.sleep(0.05)
                continue
            started = time.time()
            self.inflight[name] += 1
            try:
                reply = await client.post(
                    self.backends[name] + "/v1/chat/completions", json=body, headers=headers
                )
                ok = reply.status_code == 200 and bool(reply.json().get("choices"))
                detail = "" if ok else f"HTTP {reply.status_code}: {reply.text[:120]}"
            except (httpx.HTTPError, ValueError) as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            finally:
                self.inflight[name] -= 1
            self.results.append(Result(name, ok, started, time.time(), detail))
            await anyio.sleep(0.01)


# --- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    args: argparse.Namespace
    env: dict[str, str]
    ports: dict[str, int]
    config_dir: Path
    reloaded_model: str | None = None  # set by the leader scenario, checked after rollback

    def compose(self, *argv: str) -> list[str]:
        return ["docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *argv]

    def compose_env(self, tag: str) -> dict[str, str]:
        return {**self.env, "ROUTEIQ_TAG": tag}

    def container(self, service: str) -> str:
        cid = run(self.compose("ps", "-q", service), env=self.compose_env("v1")).strip()
        if not cid:
            raise ScenarioFailed(f"no container for service {service}")
        return cid

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def etcdctl(self, *argv: str, check: bool = True) -> str:
        cmd = [
            self.args.etcdctl,
            f"--endpoints=127.0.0.1:{self.ports['etcd']}",
            "--command-timeout=2s",
            "--dial-timeout=1s",
            *argv,
        ]
        return run(cmd, check=check)

    def leader(self) -> tuple[str, int, int] | None:
        """``(holder id, fencing token, lease id)`` of the leader key, read with etcdctl."""
        out = json.loads(self.etcdctl("get", LEADER_KEY, "-w", "json"))
        kvs = out.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        holder = base64.b64decode(kv["value"]).decode()
        return holder, int(kv["create_revision"]), int(kv.get("lease", 0))

    def leader_keys(self) -> int:
        out = json.loads(self.etcdctl("get", "--prefix", LEADER_KEY, "--keys-only", "-w", "json"))
        return len(out.get("kvs") or [])

    def published(self) -> tuple[int, dict[str, Any]] | None:
        out = json.loads(self.etcdctl("get", CONFIG_KEY, "-w", "json"))
        kvs = out.get("kvs") or []
        if not kvs:
            return None
        return int(kvs[0]["mod_revision"]), json.loads(base64.b64decode(kvs[0]["value"]))

    def image_of(self, service: str) -> str:
        return run(
            ["docker", "inspect", "-f", "{{.Config.Image}}", self.container(service)]
        ).strip()


def save_logs(stack: Stack, service: str, why: str) -> None:
    """Keep a container's log before the scenario replaces it (compose.log has the last ones)."""
    folder = Path(stack.args.state) / "logs"
    folder.mkdir(exist_ok=True)
    done = subprocess.run(
        ["docker", "logs", "-t", stack.container(service)], capture_output=True, text=True
    )
    (folder / f"{int(time.time())}-{service}-{why}.log").write_text(done.stdout + done.stderr)


def service_of(holder: str) -> str:
    """The service whose container holds ``holder`` (candidate ids start with the hostname)."""
    for name in REPLICAS:
        if holder.startswith(name + "-"):
            return name
    raise ScenarioFailed(f"leader id {holder!r} belongs to no replica")


async def wait_for(what: str, check: Any, within: float, interval: float = 0.2) -> float:
    """Seconds until ``check()`` (sync, may raise) is true; ScenarioFailed after ``within``."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < within:
        try:
            if await anyio.to_thread.run_sync(check):
                return time.monotonic() - start
        except (ScenarioFailed, httpx.HTTPError, ValueError, KeyError) as exc:
            last = exc
        await anyio.sleep(interval)
    raise ScenarioFailed(f"{what}: not within {within:.0f} s (last error: {last})")


def ready_via_loopback(stack: Stack, service: str) -> bool:
    try:
        return httpx.get(stack.url(service) + "/health/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def models_of(stack: Stack, service: str) -> set[str]:
    reply = httpx.get(
        stack.url(service) + "/v1/models",
        headers={"Authorization": f"Bearer {stack.env['ROUTEIQ_MASTER_KEY']}"},
        timeout=2.0,
    )
    return {m["id"] for m in reply.json()["data"]}


# --- scenarios ----------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    requests: int = 0
    failed: int = 0
    lost: int = 0  # failed requests on the replica the scenario took down on purpose
    figure: str = ""
    ok: bool = False
    seconds: float = 0.0


def count(results: list[Result], *, excluding: set[str] = frozenset()) -> tuple[int, int]:
    mine = [r for r in results if r.backend not in excluding]
    failed = [r for r in mine if not r.ok]
    for r in failed[:5]:
        print(f"      failed: {r.backend} at {r.started:.2f}–{r.ended:.2f}: {r.detail}")
    return len(mine), len(failed)


async def rolling(stack: Stack, traffic: Traffic, tag: str, row: Row) -> None:
    mark = traffic.mark()
    for service in REPLICAS:
        save_logs(stack, service, f"before-{tag}")
        await arun(
            stack.compose("up", "-d", "--no-deps", "--no-build", service),
            env=stack.compose_env(tag),
        )
        image = f"{stack.env['ROUTEIQ_IMAGE']}:{tag}"
        await wait_for(
            f"{service} on {image}", lambda s=service, i=image: stack.image_of(s) == i, 60
        )
        await wait_for(f"{service} ready", lambda s=service: traffic.ready[s], 180)
    await anyio.sleep(1.0)  # requests sent to the last replica complete
    results = traffic.since(mark)
    row.requests, row.failed = count(results)
    stale = [s for s in REPLICAS if stack.image_of(s) != f"{stack.env['ROUTEIQ_IMAGE']}:{tag}"]
    holders = stack.leader_keys()
    row.figure = f"3/3 replicas on :{tag}, {holders} leader key"
    row.ok = row.failed == 0 and not stale and holders == 1 and row.requests > 0


async def s_leader(stack: Stack, traffic: Traffic, row: Row) -> None:
    found = stack.leader()
    keys = stack.leader_keys()
    if found is None or keys != 1:
        raise ScenarioFailed(f"expected exactly one leader key, found {keys}")
    holder, token, _ = found
    leader = service_of(holder)
    before = stack.published()
    config = stack.config_dir / "routeiq.yaml"
    added = f"e2e-reload-{int(time.time())}"
    text = config.read_text()
    text = text.replace(
        "routeiq:\n",
        f"  - model_name: {added}\n    litellm_params:\n      model: os.environ/UPSTREAM_MODEL\n"
        "      api_base: os.environ/UPSTREAM_API_BASE\n      api_key: os.environ/UPSTREAM_API_KEY\n"
        "routeiq:\n",
        1,
    )
    config.write_text(text)  # same inode: the bind mount sees it
    follower = next(s for s in REPLICAS if s != leader)
    replies: list[str] = []

    def request_reload() -> bool:
        reply = httpx.post(
            stack.url(follower) + "/_admin/reload",
            headers={"Authorization": f"Bearer {stack.env['ROUTEIQ_ADMIN_KEY']}"},
            timeout=30.0,  # the replica waits (bounded) for the leader's answer
        )
        replies.append(f"{reply.status_code}")
        # 200: the leader published it (or already had: "unchanged") and names itself;
        # 503 (no leader yet, etcd client reconnecting) and 504 (no answer in time): retry.
        if reply.status_code not in (200, 503, 504):
            raise ScenarioFailed(f"reload via {follower}: HTTP {reply.status_code} {reply.text}")
        if reply.status_code == 200 and reply.json().get("leader") is None:
            raise ScenarioFailed(f"reload via {follower} did not name the leader: {reply.text}")
        return reply.status_code == 200

    await wait_for(f"reload accepted by {follower}", request_reload, 20, 1.0)
    took = await wait_for(
        "the reloaded model on every replica",
        lambda: all(added in models_of(stack, s) for s in REPLICAS),
        60,
    )
    after = stack.published()
    if after is None or added not in after[1]["text"]:
        raise ScenarioFailed("the new config is not the one published in etcd")
    if before is not None and after[1]["revision"] <= before[1]["revision"]:
        raise ScenarioFailed("the published config revision did not grow")
    stack.reloaded_model = added
    row.requests, row.failed = count(traffic.since(0))
    row.figure = (
        f"leader {leader} (token {token}); reload via {follower} (HTTP {'/'.join(replies)}) "
        f"on 3/3 in {took:.1f} s "
        f"(config rev {after[1]['revision']})"
    )
    row.ok = row.failed == 0


async def s_kill(stack: Stack, traffic: Traffic, row: Row, rng: random.Random) -> None:
    """10 × SIGKILL to a random ready replica, whenever at least two are ready (killed
    replicas come back through the restart policy, or ``docker start``, meanwhile)."""
    mark = traffic.mark()
    kills: list[tuple[str, float, float]] = []
    for _ in range(10):
        await wait_for("two replicas ready", lambda: sum(traffic.ready.values()) >= 2, 240, 0.1)
        victim = rng.choice([s for s in REPLICAS if traffic.ready[s]])
        cid = stack.container(victim)
        save_logs(stack, victim, "before-kill")
        sent = time.time()
        await arun(["docker", "kill", "-s", "KILL", cid])
        kills.append((victim, sent, time.time()))  # the CLI itself can take a second here
        await wait_for(f"{victim} seen down", lambda v=victim: not traffic.ready[v], 10, 0.05)
        await wait_for(f"{victim} restarted", lambda c=cid: restarted(c, kills[-1][2]), 30)
    await wait_for("all replicas ready again", lambda: all(traffic.ready.values()), 240)
    await anyio.sleep(1.0)
    results = traffic.since(mark)
    lost_per_kill = [0] * len(kills)
    others: list[Result] = []
    for r in results:
        if r.ok:
            continue
        # In flight to (or sent before the balancer noticed) a replica at the moment it died.
        hit = [
            i
            for i, (victim, sent, done) in enumerate(kills)
            if r.backend == victim and r.started <= done + 1.0 and r.ended >= sent
        ]
        if hit:
            lost_per_kill[hit[0]] += 1
        else:
            others.append(r)
    others_failed = len(others)
    for r in others[:5]:
        print(f"      not a kill's loss: {r.backend} at {r.started:.2f}–{r.ended:.2f}: {r.detail}")
    if others:
        timeline = [(v, round(a, 2), round(b, 2)) for v, a, b in kills]
        print(f"      kills (replica, sent, done): {timeline}")
    row.requests = len(results)
    row.failed = others_failed
    row.lost = max(lost_per_kill)
    victims = ",".join(v for v, _, _ in kills)
    row.figure = (
        f"killed {victims}; lost in flight per kill {lost_per_kill}; "
        f"every other request ok: {others_failed == 0}"
    )
    row.ok = others_failed == 0 and len(results) > 0


def restarted(cid: str, killed_at: float) -> bool:
    """The killed container runs again: its restart policy brought it back, or we do."""
    state = run(["docker", "inspect", "-f", "{{.State.Status}}", cid]).strip()
    if state == "exited" and time.time() - killed_at > 3:
        run(["docker", "start", cid], check=False)
    return state == "running"


FENCED_WRITE = """
import sys, anyio
from routeiq.errors import LeadershipLost
from routeiq.leadership.election import ElectionUnavailable, LeaderTerm, LeaderTimings
from routeiq.leadership.etcd import EtcdElection

async def main() -> int:
    holder, token = sys.argv[1], int(sys.argv[2])
    election = EtcdElection(holder, host="etcd", port=2379, key=sys.argv[3],
                            timings=LeaderTimings(5, 3, 1))
    async with election:
        for _ in range(40):
            try:
                stale = LeaderTerm(holder, token, 0.0)
                await election.fenced_put(sys.argv[4], "stale write", term=stale)
            except LeadershipLost as exc:
                print("refused:", exc)
                return 0
            except ElectionUnavailable:
                await anyio.sleep(0.5)
                continue
            print("ACCEPTED")
            return 1
    print("etcd unreachable")
    return 2

sys.exit(anyio.run(main))
"""


async def s_partition(stack: Stack, traffic: Traffic, row: Row) -> None:
    found = stack.leader()
    if found is None:
        raise ScenarioFailed("no leader before the partition")
    holder, token, _ = found
    victim = service_of(holder)
    cid = stack.container(victim)
    network = next(
        iter(
            json.loads(run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", cid]))
        )
    )
    config_before = stack.published()
    mark = traffic.mark()
    watch = await anyio.open_process(
        [
            stack.args.etcdctl,
            f"--endpoints=127.0.0.1:{stack.ports['etcd']}",
            "watch",
            LEADER_KEY,
            "-w",
            "json",
        ]
    )
    deleted_at: float | None = None
    new_leader: tuple[str, int, float] | None = None
    try:
        await anyio.sleep(0.5)  # the watch is established
        cut_at = time.time()
        await arun(["docker", "network", "disconnect", network, cid])
        buffer = b""
        assert watch.stdout is not None
        with anyio.move_on_after(LEASE_TTL_S + 15):
            async for chunk in watch.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip().startswith(b"{"):
                        continue
                    now = time.time()
                    for event in json.loads(line).get("Events") or []:
                        if event.get("type") == 1 or event.get("type") == "DELETE":
                            deleted_at = deleted_at or now
                        else:
                            kv = event["kv"]
                            new_leader = (
                                base64.b64decode(kv["value"]).decode(),
                                int(kv["create_revision"]),
                                now,
                            )
                if new_leader is not None:
                    break
    finally:
        watch.terminate()
        await watch.aclose()
    if new_leader is None or deleted_at is None:
        raise ScenarioFailed("no new leader observed in etcd after the partition")
    failover = new_leader[2] - cut_at
    # The old leader's own record of stepping down (its clock is the host's clock).
    await arun(["docker", "network", "connect", "--alias", victim, network, cid])
    lifecycle = json.loads(
        await arun(
            [
                "docker",
                "exec",
                cid,
                "python",
                "-c",
                "import urllib.request;print(urllib.request.urlopen("
                "'http://127.0.0.1:4000/_lifecycle?limit=100000', timeout=5).read().decode())",
            ]
        )
    )
    step_downs = [
        e["wall_time"]
        for e in lifecycle["events"]
        if e["kind"] == "leadership"
        and e["from_state"] == "leader"
        and e["attributes"].get("fencing_token") in (token, str(token))
    ]
    stepped_down_at = min(step_downs) if step_downs else None
    fenced = await arun(
        [
            "docker",
            "exec",
            cid,
            "python",
            "-c",
            FENCED_WRITE,
            holder,
            str(token),
            LEADER_KEY,
            CONFIG_KEY,
        ],
        check=False,
    )
    config_after = stack.published()
    await wait_for(f"{victim} ready after reconnecting", lambda: traffic.ready[victim], 60)
    results = traffic.since(mark)
    row.requests, row.failed = count(results, excluding={victim})
    row.lost = sum(1 for r in results if r.backend == victim and not r.ok)
    margin = None if stepped_down_at is None else deleted_at - stepped_down_at
    row.figure = (
        f"failover {failover:.2f} s (TTL {LEASE_TTL_S:.0f} s); old leader stepped down "
        + ("never" if margin is None else f"{margin:.2f} s before its lease expired")
        + f"; stale write: {fenced.strip().splitlines()[-1] if fenced.strip() else 'no output'}"
    )
    checks = {
        "failover within TTL + 1 s": failover <= LEASE_TTL_S + 1,
        "a different leader": service_of(new_leader[0]) != victim and new_leader[1] > token,
        "stepped down before expiry": margin is not None and margin > 0,
        "stale write refused": fenced.strip().startswith("refused"),
        "config untouched": config_before == config_after,
        "others never failed": row.failed == 0,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        row.figure += f" — FAILED: {', '.join(failed)}"
    row.ok = not failed


async def s_etcd_down(stack: Stack, traffic: Traffic, row: Row) -> None:
    mark, idle = traffic.mark(), traffic.no_backend
    etcd = stack.container("etcd")
    await arun(["docker", "stop", "-t", "5", etcd])
    await anyio.sleep(30)  # the outage itself
    await arun(["docker", "start", etcd])
    up = await wait_for(
        "etcd healthy", lambda: bool(stack.etcdctl("endpoint", "health", check=False)), 60
    )
    recovered = await wait_for("a leader again", lambda: stack.leader() is not None, 60, 0.1)
    await anyio.sleep(1.0)
    row.requests, row.failed = count(traffic.since(mark))
    keys = stack.leader_keys()
    row.figure = (
        f"etcd back after {up:.1f} s; leader again {recovered:.1f} s later; {keys} leader key"
    )
    row.ok = row.failed == 0 and keys == 1 and traffic.no_backend == idle


async def scenarios(args: argparse.Namespace, stack: Stack, rows: list[Row]) -> None:
    backends = {s: stack.url(s) for s in REPLICAS}
    traffic = Traffic(backends, stack.env["ROUTEIQ_MASTER_KEY"])
    stop = anyio.Event()
    rng = random.Random(args.seed)

    async def step(name: str, body: Any) -> None:
        row = Row(name)
        rows.append(row)
        if args.only and name not in args.only:
            row.figure = "skipped (--only)"
            return
        started = time.monotonic()
        try:
            await body(row)
        except ScenarioFailed as exc:
            row.ok = False
            row.figure = f"{row.figure} FAILED: {exc}".strip()
        row.seconds = time.monotonic() - started
        print(
            f"   {name}: {'ok' if row.ok else 'FAILED'} in {row.seconds:.0f} s: {row.figure}",
            flush=True,
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(traffic.run, stop)
        await wait_for(
            "traffic on every replica",
            lambda: all(traffic.ready.values()) and len(traffic.ready) == 3,
            60,
        )
        await step("leader", lambda row: s_leader(stack, traffic, row))
        await step("rolling v1→v2", lambda row: rolling(stack, traffic, "v2", row))
        await step("kill ×10", lambda row: s_kill(stack, traffic, row, rng))
        await step("partition", lambda row: s_partition(stack, traffic, row))
        await step("etcd down 30 s", lambda row: s_etcd_down(stack, traffic, row))

        async def rollback(row: Row) -> None:
            await rolling(stack, traffic, "v1", row)
            model = stack.reloaded_model
            if model is not None:
                kept = all(model in models_of(stack, s) for s in REPLICAS)
                row.figure += f"; reloaded model kept on {'3/3' if kept else 'NOT all'}"
                row.ok = row.ok and kept

        await step("rollback v2→v1", rollback)
        stop.set()
    total = len(traffic.results)
    print(
        f"   traffic: {total} requests, {sum(not r.ok for r in traffic.results)} failed in all "
        f"(incl. the replicas taken down on purpose), {traffic.no_backend} times no ready replica"
    )


def build_images(args: argparse.Namespace, image: str) -> None:
    common = [
        "docker",
        "build",
        "-q",
        "--build-arg",
        f"BASE_IMAGE={args.base_image}",
        "--build-arg",
        "OFFLINE=1",
    ]
    run([*common, "--target", "upstream", "-t", f"{image}-upstream:v1", str(ROOT)])
    run([*common, "--target", "gateway", "-t", f"{image}:v1", str(ROOT)])
    run(
        [
            *common,
            "--target",
            "gateway",
            "--label",
            "org.opencontainers.image.version=v2",
            "-t",
            f"{image}:v2",
            str(ROOT),
        ]
    )


@contextmanager
def stack_up(args: argparse.Namespace) -> Iterator[Stack]:
    image = "routeiq-e2e"
    config_dir = Path(args.state).resolve() / "config"
    shutil.rmtree(config_dir, ignore_errors=True)
    shutil.copytree(ROOT / "deploy" / "compose" / "config", config_dir)
    ports = {name: free_port() for name in (*REPLICAS, "etcd", "prometheus")}
    env = {
        **os.environ,
        "ROUTEIQ_IMAGE": image,
        "ROUTEIQ_UPSTREAM_IMAGE": f"{image}-upstream:v1",
        "ETCD_IMAGE": args.etcd_image,
        "PROMETHEUS_IMAGE": args.prometheus_image,
        "ROUTEIQ_CONFIG_DIR": str(config_dir),
        "ROUTEIQ_MASTER_KEY": "sk-e2e-" + os.urandom(8).hex(),
        "ROUTEIQ_ADMIN_KEY": "admin-e2e-" + os.urandom(8).hex(),
        "GW1_PORT": str(ports["gw1"]),
        "GW2_PORT": str(ports["gw2"]),
        "GW3_PORT": str(ports["gw3"]),
        "ETCD_HOST_PORT": str(ports["etcd"]),
        "PROMETHEUS_PORT": str(ports["prometheus"]),
    }
    stack = Stack(args, env, ports, config_dir)
    run(stack.compose("down", "-v", "--remove-orphans"), env=stack.compose_env("v1"), check=False)
    try:
        run(stack.compose("up", "-d", "--no-build"), env=stack.compose_env("v1"))
        yield stack
    finally:
        if args.keep:
            print(f"   --keep: stack left up (project {PROJECT})")
        else:
            logs = run(
                stack.compose("logs", "--no-color", "--tail", "400"),
                env=stack.compose_env("v1"),
                check=False,
            )
            (Path(args.state) / "compose.log").write_text(logs)
            run(
                stack.compose("down", "-v", "--remove-orphans", "-t", "20"),
                env=stack.compose_env("v1"),
                check=False,
            )


def prometheus_check(stack: Stack) -> str:
    base = f"http://127.0.0.1:{stack.ports['prometheus']}/api/v1"
    targets = httpx.get(base + "/targets", timeout=5).json()["data"]["activeTargets"]
    up = sum(1 for t in targets if t["health"] == "up")
    groups = httpx.get(base + "/rules", timeout=5).json()["data"]["groups"]
    rules = sum(len(g["rules"]) for g in groups)
    if up != 3 or rules == 0:
        raise ScenarioFailed(f"{up}/3 targets up, {rules} rules loaded")
    return f"{up}/3 targets up, {rules} rules from alerts/ loaded"


def print_table(rows: list[Row], image_size: str) -> None:
    print()
    head = ("scenario", "requests", "failed (must be 0)", "max lost in flight", "result", "s")
    print("| " + " | ".join((*head, "figures")) + " |")
    print("|---" * (len(head) + 1) + "|")
    for r in rows:
        cells = (r.name, r.requests, r.failed, r.lost, "ok" if r.ok else "FAILED")
        print("| " + " | ".join(str(c) for c in (*cells, f"{r.seconds:.0f}", r.figure)) + " |")
    print(f"\nimage: {image_size}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", required=True)
    parser.add_argument("--etcd-image", required=True)
    parser.add_argument("--prometheus-image", required=True)
    parser.add_argument("--etcdctl", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--started", type=float, default=time.time(), help="epoch of the run")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    args = parser.parse_args()
    started = time.monotonic()
    print("== building images (v1, v2 and the upstream)", flush=True)
    build_images(args, "routeiq-e2e")
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", "routeiq-e2e:v1"]).strip())
    base = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", args.base_image]).strip())
    image_size = f"routeiq-e2e:v1 {size / 1e6:.0f} MB ({base / 1e6:.0f} MB of it the base image)"
    probe = "id -u; for c in gcc cc c++ make; do command -v $c; done; true"
    inside = run(["docker", "run", "--rm", "--entrypoint", "sh", "routeiq-e2e:v1", "-c", probe])
    uid, *compilers = inside.split()
    if uid == "0" or compilers:
        print(f"   image check FAILED: uid {uid}, compilers {compilers}")
        return 1
    image_size += f"; runs as uid {uid}, no compiler in the image"
    print(f"   {image_size}; built in {time.monotonic() - started:.0f} s", flush=True)
    rows: list[Row] = []
    with stack_up(args) as stack:
        print("== stack up", flush=True)
        up = anyio.run(
            lambda: wait_for(
                "3 replicas ready",
                lambda: all(ready_via_loopback(stack, s) for s in REPLICAS),
                240,
                1.0,
            )
        )
        print(f"   3 replicas ready {up:.0f} s after `up -d`", flush=True)
        prom = Row("prometheus")
        try:
            anyio.run(
                lambda: wait_for(
                    "prometheus scraping", lambda: bool(prometheus_check(stack)), 60, 1.0
                )
            )
            prom.figure, prom.ok = prometheus_check(stack), True
        except ScenarioFailed as exc:
            prom.figure = f"FAILED: {exc}"
        rows.append(prom)
        print("== scenarios", flush=True)
        anyio.run(scenarios, args, stack, rows)
    print_table(rows, image_size)
    ran = [r for r in rows if r.figure != "skipped (--only)"]
    passed = sum(r.ok for r in ran)
    print(f"\ne2e-deploy took {time.time() - args.started:.0f} s in all")
    print(f"e2e-deploy: {passed} passed, {len(ran) - passed} failed")
    return 0 if ran and passed == len(ran) else 1


if __name__ == "__main__":
    sys.exit(main())
