"""MCP gateway benchmark: the latency a tool call gains by going through ``/mcp``.

It starts one real MCP server (the ``mcp`` SDK, ``tests/mcp/servers.py``, in its own process)
and one gateway (``GatewayApp`` under hypercorn, in this process) with that server
registered, then calls the server's ``echo`` tool sequentially, with the SDK's client, directly
and through the gateway, in alternating rounds. It prints p50/p90/p99/mean per path and the
difference (the gateway's added latency).

    python benchmarks/mcp_gateway.py --calls 300 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests package

from tests.mcp.conftest import gateway_config, mcp_client, served, wait_tools
from tests.mcp.servers import mcp_servers


async def _time_calls(client: Any, tool: str, calls: int) -> list[float]:
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        await client.call_tool(tool, {"text": str(i)})
        samples.append(time.perf_counter() - start)
    return samples


def _row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    cells = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.9, 0.99)]
    cells.append(statistics.fmean(samples))
    return f"| {name} | {len(samples)} | " + " | ".join(f"{c * 1000:.2f}" for c in cells) + " |"


async def main(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with mcp_servers("bench") as servers:
            mcp = {
                "servers": [{"name": "bench", "url": servers["bench"].url}],
                "store_path": str(Path(tmp) / "registry.sqlite"),
            }
            config = gateway_config(Path(tmp) / "gateway.yaml", mcp, log_level="warning")
            async with (
                served(config) as gateway,
                mcp_client(servers["bench"].url) as direct,
                mcp_client(gateway.mcp_url) as through,
            ):
                await wait_tools(through, lambda names: "bench.echo" in names)
                await _time_calls(direct, "echo", 20)  # warm up both paths
                await _time_calls(through, "bench.echo", 20)
                direct_s: list[float] = []
                gateway_s: list[float] = []
                for _ in range(rounds):
                    direct_s += await _time_calls(direct, "echo", calls)
                    gateway_s += await _time_calls(through, "bench.echo", calls)
    print("| path | calls | p50 ms | p90 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|---|")
    print(_row("direct to the MCP server", direct_s))
    print(_row("through the gateway's /mcp", gateway_s))
    added = [
        statistics.median(gateway_s) - statistics.median(direct_s),
        statistics.fmean(gateway_s) - statistics.fmean(direct_s),
    ]
    print(f"\nadded by the gateway: {added[0] * 1000:.2f} ms at p50, {added[1] * 1000:.2f} ms mean")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    anyio.run(main, args.calls, args.rounds)
