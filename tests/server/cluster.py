"""Gateway replicas on one etcd, as real processes: for the cluster tests and the benchmark.

A ``Cluster`` runs ``hypercorn routeiq.app:app --workers 0`` replicas on free loopback ports.
``--workers 0`` keeps each replica one process, so SIGKILL/SIGSTOP/SIGTERM reach the gateway
itself rather than a hypercorn master whose worker would outlive it. The replicas share one YAML
config (etcd backend, short timings) unless a test gives one its own copy; each has its own
worker id (``ROUTEIQ_WORKER_ID``) and JSONL event log (``ROUTEIQ_EVENT_LOG``), which survives
the process. The cluster reads what the replicas say (``/_lifecycle``, ``/metrics``,
``/v1/models``) and what etcd itself says (an aetcd client), so a test can compare the two.

Event times are the gateways' ``time.monotonic()``, one clock for every process on the host,
so a test measures from its own ``time.monotonic()`` to a replica's event without polling error.
Nothing starts at import; ``open_cluster`` stops every replica it started.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import yaml

from tests.support.etcd import EtcdServer
from tests.support.procs import BIN, GatewayProcess, free_port, gateway_env

__all__ = [
    "ADMIN_KEY",
    "CHAT",
    "READ_KEY",
    "TIMINGS",
    "UPSTREAM_KEY",
    "UPSTREAM_KEY_ENV",
    "Cluster",
    "Replica",
    "Seat",
    "Traffic",
    "config_data",
    "drive_traffic",
    "metric_value",
    "open_cluster",
]

TIMINGS: Mapping[str, float] = {"lease_ttl_s": 3, "renew_deadline_s": 2, "retry_period_s": 0.5}
CHAT = {"messages": [{"role": "user", "content": "ping"}]}
UPSTREAM_KEY_ENV = "ROUTEIQ_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-test-cluster-upstream"
READ_KEY = "cluster-read-key-0123456789"
ADMIN_KEY = "cluster-admin-key-9876543210"
POLL_S = 0.05


def config_data(
    etcd_endpoint: str, prefix: str, models: Sequence[str], **leadership: Any
) -> dict[str, Any]:
    """A config whose models are answered by litellm's ``mock_response`` (no upstream)."""
    return {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "mock_response": f"pong from {name}",
                    # etcd stores the config as written: secrets are references.
                    "api_key": f"os.environ/{UPSTREAM_KEY_ENV}",
                },
            }
            for name in models
        ],
        "routeiq": {
            "leadership": {
                "backend": "etcd",
                "etcd_endpoints": [etcd_endpoint],
                "key_prefix": prefix,
                **TIMINGS,
                **leadership,
            },
        },
    }


def write_atomically(path: Path, text: str) -> float:
    """Replace ``path`` in one rename (a poller never reads half a file); returns when."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return time.monotonic()


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sample ``name{labels}`` in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series == name and not want:
            return float(value)
        if series.startswith(f"{name}{{") and series.endswith("}"):
            got = ",".join(sorted(series[len(name) + 1 : -1].split(",")))
            if got == want:
                return float(value)
    return 0.0


@dataclass
class Replica:
    name: str
    process: GatewayProcess
    event_log: Path
    config_path: Path
    paused: bool = False

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    @property
    def running(self) -> bool:
        return self.process.proc.poll() is None

    def signal(self, signum: int) -> float:
        """Send ``signum``; returns the monotonic time it was sent."""
        sent = time.monotonic()
        self.process.signal(signum)
        if signum == signal.SIGSTOP:
            self.paused = True
        elif signum == signal.SIGCONT:
            self.paused = False
        return sent

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every event this replica wrote to its JSONL log (also after it died)."""
        if not self.event_log.exists():
            return []
        lines = self.event_log.read_text(encoding="utf-8").splitlines()
        found = [json.loads(line) for line in lines if line.strip()]
        return [e for e in found if kind is None or e["kind"] == kind]

    def __repr__(self) -> str:
        return f"Replica({self.name}, pid={self.process.proc.pid}, port={self.process.port})"


@dataclass(frozen=True)
class Seat:
    """Who holds ``<prefix>/leader`` according to etcd itself."""

    holder: str
    token: int  # the key's create revision: the term's fencing token
    lease: int


@dataclass
class Traffic:
    """What a request loop saw: successes per replica and every failure, spelled out."""

    ok: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


class Cluster:
    def __init__(
        self,
        root: Path,
        etcd: EtcdServer,
        http: httpx.AsyncClient,
        etcd_client: Any,
        *,
        prefix: str,
        models: Sequence[str],
        leadership: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.env = dict(env or {})
        root.mkdir(parents=True, exist_ok=True)
        self.etcd = etcd
        self.http = http
        self.etcd_client = etcd_client
        self.prefix = prefix.rstrip("/")
        self.settings = {**TIMINGS, **(leadership or {})}
        self.config_path = root / "config.yaml"
        self.replicas: list[Replica] = []
        self._names = 0
        self.write_config(models)

    # --- config ---------------------------------------------------------------------------

    def config_text(self, models: Sequence[str]) -> str:
        endpoint = f"{self.etcd.host}:{self.etcd.port}"
        data = config_data(endpoint, self.prefix, models, **self.settings)
        return yaml.safe_dump(data, sort_keys=False)

    def write_config(self, models: Sequence[str], path: Path | None = None) -> float:
        return write_atomically(path or self.config_path, self.config_text(models))

    def write_text(self, text: str, path: Path | None = None) -> float:
        return write_atomically(path or self.config_path, text)

    # --- replicas -------------------------------------------------------------------------

    def spawn(self, *, own_config: bool = False) -> Replica:
        """Start one replica (not waiting for it); ``own_config`` gives it a private copy."""
        self._names += 1
        name = f"r{self._names}"
        config = self.config_path
        if own_config:
            config = self.root / f"config-{name}.yaml"
            config.write_text(self.config_path.read_text(encoding="utf-8"), encoding="utf-8")
        port = free_port()
        event_log = self.root / f"events-{name}.jsonl"
        env = gateway_env({
            "ROUTEIQ_CONFIG": str(config),
            "ROUTEIQ_WORKER_ID": name,
            "ROUTEIQ_EVENT_LOG": str(event_log),
            "ROUTEIQ_LOG_LEVEL": "warning",
            UPSTREAM_KEY_ENV: UPSTREAM_KEY,
            **self.env,
        })  # fmt: skip
        cmd = [str(BIN / "hypercorn"), "routeiq.app:app", "--bind", f"127.0.0.1:{port}"]
        cmd += ["--config", str(self._hypercorn_config())]
        process = GatewayProcess([*cmd, "--workers", "0"], port, env, self.root / f"{name}.log")
        replica = Replica(name, process.start(), event_log, config)
        self.replicas.append(replica)
        return replica

    def _hypercorn_config(self) -> Path:
        # hypercorn gives up on a lifespan startup after 60 s; importing litellm alone has taken
        # longer than that on a loaded 2-core CI box, three replicas at once.
        path = self.root / "hypercorn.toml"
        if not path.exists():
            path.write_text("startup_timeout = 240\n", encoding="utf-8")
        return path

    async def start(self, count: int, *, own_config: bool = False) -> list[Replica]:
        started = [self.spawn(own_config=own_config) for _ in range(count)]
        async with anyio.create_task_group() as tg:
            for replica in started:
                tg.start_soon(self.wait_ready, replica)
        return started

    async def wait_ready(self, replica: Replica, within: float = 120.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not replica.running:
                raise AssertionError(
                    f"{replica} exited with {replica.process.proc.returncode}:\n"
                    f"{replica.process.output()}"
                )
            try:
                got = await self.http.get(f"{replica.url}/health/ready", timeout=2.0)
                if got.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(POLL_S)
        raise AssertionError(f"{replica} not ready after {within}s:\n{replica.process.output()}")

    def serving(self) -> list[Replica]:
        """Replicas whose process runs and is not paused."""
        return [r for r in self.replicas if r.running and not r.paused]

    async def wait_exit(self, replica: Replica, within: float = 30.0) -> int:
        deadline = time.monotonic() + within
        while (code := replica.process.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{replica} still running {within}s after being stopped")
            await anyio.sleep(POLL_S)
        return code

    def stop_all(self) -> None:
        for replica in self.replicas:
            if replica.running:
                if replica.paused:
                    replica.signal(signal.SIGCONT)
                replica.signal(signal.SIGTERM)
        for replica in self.replicas:
            replica.process.stop()

    # --- what the replicas say ------------------------------------------------------------

    async def lifecycle(self, replica: Replica, *, since: int = 0) -> dict[str, Any]:
        got = await self.http.get(f"{replica.url}/_lifecycle", params={"since": since}, timeout=5)
        got.raise_for_status()
        body: dict[str, Any] = got.json()
        return body

    async def leadership(self, replica: Replica) -> dict[str, Any]:
        body = await self.lifecycle(replica, since=1 << 30)
        view: dict[str, Any] = body["leadership"]
        return view

    async def events(
        self, replica: Replica, kind: str, *, since_seq: int = 0
    ) -> list[dict[str, Any]]:
        body = await self.lifecycle(replica, since=since_seq)
        return [e for e in body["events"] if e["kind"] == kind]

    async def next_seq(self, replica: Replica) -> int:
        """The seq the replica's next event will get (for reading only what follows)."""
        seq = 0
        while events := (await self.lifecycle(replica, since=seq))["events"]:
            seq = int(events[-1]["seq"]) + 1  # a page holds at most 1000 events
        return seq

    async def metrics(self, replica: Replica) -> str:
        got = await self.http.get(f"{replica.url}/metrics", timeout=5)
        got.raise_for_status()
        return got.text

    async def metric(
        self, replica: Replica, name: str, labels: Mapping[str, str] | None = None
    ) -> float:
        return metric_value(await self.metrics(replica), name, labels)

    async def models(self, replica: Replica) -> set[str]:
        got = await self.http.get(f"{replica.url}/v1/models", timeout=5)
        got.raise_for_status()
        return {m["id"] for m in got.json()["data"]}

    # --- what etcd says -------------------------------------------------------------------

    async def seat(self) -> Seat | None:
        with anyio.fail_after(5):
            kv = await self.etcd_client.get(f"{self.prefix}/leader".encode())
        if kv is None:
            return None
        return Seat(bytes(kv.value).decode(), int(kv.create_revision), int(kv.lease))

    async def published(self) -> tuple[dict[str, Any], int, int] | None:
        """``(body, mod_revision, version)`` of ``<prefix>/config``, or ``None``."""
        with anyio.fail_after(5):
            kv = await self.etcd_client.get(f"{self.prefix}/config".encode())
        if kv is None:
            return None
        return json.loads(bytes(kv.value)), int(kv.mod_revision), int(kv.version)

    # --- agreement --------------------------------------------------------------------------

    async def wait_leader(
        self, among: Sequence[Replica] | None = None, *, newer_than: int = 0, within: float = 30
    ) -> tuple[Replica, Seat]:
        """Wait until exactly one of ``among`` (default: every serving replica) leads, in a
        term newer than ``newer_than``, every other one follows that leader, and etcd's
        leader key names the same holder and token. Fails with the last observation."""
        among = list(among if among is not None else self.serving())
        deadline = time.monotonic() + within
        seen: object = None
        while time.monotonic() < deadline:
            views = {r.name: await self.leadership(r) for r in among}
            seat = await self.seat()
            seen = (seat, views)
            leaders = [r for r in among if views[r.name]["state"] == "leader"]
            if seat is not None and seat.token > newer_than and len(leaders) == 1:
                leader = leaders[0]
                view = views[leader.name]
                agreed = (
                    view["candidate_id"] == seat.holder == leader.name
                    and view["fencing_token"] == seat.token
                    and all(
                        views[r.name]["state"] == "follower"
                        and views[r.name]["leader_id"] == leader.name
                        for r in among
                        if r is not leader
                    )
                )
                if agreed:
                    return leader, seat
            await anyio.sleep(POLL_S)
        raise AssertionError(f"no single agreed leader within {within}s; last seen: {seen}")


@asynccontextmanager
async def open_cluster(
    root: Path,
    etcd: EtcdServer,
    *,
    prefix: str = "/routeiq-cluster",
    models: Sequence[str] = ("echo",),
    leadership: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    """A cluster (no replicas yet) on the running ``etcd``; stops its replicas on exit.
    ``leadership`` overrides the ``routeiq.leadership`` settings (default: ``TIMINGS``), ``env``
    adds to each replica's environment. Replicas get a read key, which the cluster's HTTP
    client presents: it reads their full (unredacted) control plane."""
    env = {"ROUTEIQ_READ_KEY": READ_KEY, "ROUTEIQ_ADMIN_KEY": ADMIN_KEY, **(env or {})}
    headers = {"authorization": f"Bearer {env['ROUTEIQ_READ_KEY']}"}
    async with (
        httpx.AsyncClient(headers=headers) as http,
        etcd.client(timeout=5) as etcd_client,
    ):
        cluster = Cluster(
            root,
            etcd,
            http,
            etcd_client,
            prefix=prefix,
            models=models,
            leadership=leadership,
            env=env,
        )
        try:
            yield cluster
        finally:
            cluster.stop_all()


async def drive_traffic(
    http: httpx.AsyncClient,
    replicas: Sequence[Replica],
    traffic: Traffic,
    *,
    model: str,
    pace_s: float = 0.02,
    limit_s: float = 60.0,
) -> None:
    """Send chat requests to every replica (one loop each, a request every ``pace_s``) until
    cancelled or ``limit_s`` passes; each outcome goes into ``traffic``."""

    async def loop(replica: Replica) -> None:
        body = {"model": model, **CHAT}
        with anyio.move_on_after(limit_s):
            while True:
                try:
                    got = await http.post(
                        f"{replica.url}/v1/chat/completions", json=body, timeout=10
                    )
                except httpx.HTTPError as exc:
                    traffic.failures.append(f"{replica.name}: {type(exc).__name__}: {exc}")
                else:
                    if got.status_code == 200 and got.json()["choices"][0]["message"]["content"]:
                        traffic.ok[replica.name] += 1
                    else:
                        traffic.failures.append(f"{replica.name}: {got.status_code} {got.text}")
                await anyio.sleep(pace_s)

    async with anyio.create_task_group() as tg:
        for replica in replicas:
            tg.start_soon(loop, replica)
