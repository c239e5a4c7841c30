"""MCP registry benchmark: how long a change on one replica takes to show on another.

It starts a real etcd on loopback, one real MCP server (``tests/mcp/servers.py``) and two
``routeiq serve`` replicas on that etcd with the config's defaults for the MCP registry. Each
trial registers, updates (a deny list) and deletes the server through one replica's admin API
and measures, from the moment the request is sent, when the *other* replica shows the change
in its admin list and in its ``/mcp`` ``tools/list`` (which needs its session to the MCP server).
Trials alternate the replica written to, so half of the changes are submitted on the leader and
half on a follower; the table splits them. It prints p50/p90/max per operation and view.

    python benchmarks/mcp_registry.py --trials 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests package

from tests.mcp.conftest import ADMIN, MASTER, mcp_client
from tests.mcp.servers import mcp_servers
from tests.support.etcd import EtcdServer, find_etcd
from tests.support.procs import BIN, GatewayProcess, free_port, gateway_env

POLL_S = 0.005
DEADLINE_S = 30.0


def write_config(directory: Path, etcd: EtcdServer) -> Path:
    data = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
        "routeiq": {
            "master_key": MASTER,
            "admin_key": ADMIN,
            "log_level": "warning",
            "leadership": {
                "backend": "etcd",
                "etcd_endpoints": [f"{etcd.host}:{etcd.port}"],
                "key_prefix": "/bench-mcp",
            },
            "mcp": {"allow_hosts": ["127.0.0.1"]},
        },
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_replica(config: Path, directory: Path) -> GatewayProcess:
    port = free_port()
    cmd = [str(BIN / "routeiq"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return GatewayProcess(
        [*cmd, "--config", str(config)], port, gateway_env(), directory / f"replica-{port}.log"
    ).start()


class Replica:
    def __init__(self, admin: httpx.AsyncClient, mcp: Any) -> None:
        self.admin, self.mcp = admin, mcp

    async def leads(self) -> bool:
        body = (await self.admin.get("/_lifecycle", params={"limit": 0})).json()
        return bool(body["leadership"]["state"] == "leader")

    async def servers(self) -> dict[str, dict[str, Any]]:
        rows = (await self.admin.get("/_admin/mcp/servers")).json()["servers"]
        return {row["name"]: row for row in rows}

    async def tools(self) -> list[str]:
        return sorted(t.name for t in (await self.mcp.list_tools()).tools)


async def _until(check: Callable[[], Awaitable[bool]], start: float) -> float:
    with anyio.fail_after(DEADLINE_S):
        while True:
            if await check():
                return time.perf_counter() - start
            await anyio.sleep(POLL_S)


async def measure(
    change: Callable[[], Awaitable[httpx.Response]],
    listed: Callable[[], Awaitable[bool]],
    tools: Callable[[], Awaitable[bool]],
) -> tuple[float, float, float]:
    """(answer, admin list, tools/list) seconds after the change was sent."""
    found: dict[str, float] = {}
    start = time.perf_counter()

    async def answer() -> None:
        reply = await change()
        if reply.status_code >= 300:
            raise RuntimeError(f"{reply.status_code}: {reply.text}")
        found["answer"] = time.perf_counter() - start

    async def watch(name: str, check: Callable[[], Awaitable[bool]]) -> None:
        found[name] = await _until(check, start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(answer)
        tg.start_soon(watch, "listed", listed)
        tg.start_soon(watch, "tools", tools)
    return found["answer"], found["listed"], found["tools"]


async def trial(writer: Replica, reader: Replica, url: str) -> dict[str, tuple[float, ...]]:
    path = "/_admin/mcp/servers/alpha"

    async def registered() -> bool:
        return "alpha" in await reader.servers()

    async def tools_up() -> bool:
        return "alpha.echo" in await reader.tools()

    async def updated() -> bool:
        row = (await reader.servers()).get("alpha")
        return row is not None and row["tools_deny"] == ["add"]

    async def tools_updated() -> bool:
        names = await reader.tools()
        return "alpha.echo" in names and "alpha.add" not in names

    async def deleted() -> bool:
        return "alpha" not in await reader.servers()

    async def tools_gone() -> bool:
        return not any(n.startswith("alpha.") for n in await reader.tools())

    body = {"name": "alpha", "url": url}
    return {
        "register": await measure(lambda: writer.admin.put(path, json=body), registered, tools_up),
        "update": await measure(
            lambda: writer.admin.put(path, json={**body, "tools_deny": ["add"]}),
            updated,
            tools_updated,
        ),
        "delete": await measure(lambda: writer.admin.delete(path), deleted, tools_gone),
    }


async def _any_leads(replicas: list[Replica]) -> bool:
    return any([await r.leads() for r in replicas])


def _cells(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{p50 * 1000:.0f} | {p90 * 1000:.0f} | {ordered[-1] * 1000:.0f}"


async def main(trials: int) -> None:
    binary = find_etcd()
    if binary is None:
        raise SystemExit("no etcd binary: scripts/setup dev installs one")
    results: dict[tuple[str, str], list[tuple[float, ...]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        etcd = EtcdServer(binary, directory / "etcd" / "data")
        etcd.start()
        processes: list[GatewayProcess] = []
        try:
            config = write_config(directory, etcd)
            processes = [start_replica(config, directory) for _ in range(2)]
            for process in processes:
                await anyio.to_thread.run_sync(process.wait_ready, 120.0)
            async with mcp_servers("alpha") as servers:
                headers = {"Authorization": f"Bearer {ADMIN}"}
                async with (
                    httpx.AsyncClient(base_url=processes[0].url, headers=headers) as a0,
                    httpx.AsyncClient(base_url=processes[1].url, headers=headers) as a1,
                    mcp_client(f"{processes[0].url}/mcp") as m0,
                    mcp_client(f"{processes[1].url}/mcp") as m1,
                ):
                    replicas = [Replica(a0, m0), Replica(a1, m1)]
                    await _until(lambda: _any_leads(replicas), time.perf_counter())
                    url = servers["alpha"].url
                    for i in range(trials):
                        writer, reader = replicas[i % 2], replicas[1 - i % 2]
                        role = "leader" if await writer.leads() else "follower"
                        for op, sample in (await trial(writer, reader, url)).items():
                            results[(op, role)].append(sample)
        finally:
            for process in processes:
                process.stop()
            etcd.kill()
    print("| change | written on | trials | view on the other replica | p50 ms | p90 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    views = ("admin answer (writer)", "admin list", "/mcp tools/list")
    for (op, role), samples in sorted(results.items()):
        for index, view in enumerate(views):
            column = [s[index] for s in samples]
            print(f"| {op} | {role} | {len(samples)} | {view} | {_cells(column)} |")
    every = [s[2] for rows in results.values() for s in rows]
    print(f"\nall changes, /mcp tools/list on the other replica: max {max(every) * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="changes of each kind")
    args = parser.parse_args()
    anyio.run(main, args.trials)
