"""``/mcp`` under ``routeiq serve --workers 2``: one client's requests land on either worker.

The workers share one listening socket; the client opens a connection per request, so its
requests are spread over both workers (as a load balancer spreads them over replicas). The
endpoint is stateless, so list, call, tool errors, argument errors and ``list_changed`` hold
for both the 2026-07-28 protocol and the pre-2026 ``initialize`` one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.mcp.conftest import ADMIN, gateway_config, mcp_client, wait_tools
from tests.mcp.servers import mcp_servers, tool_text

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def wait_workers_serving(url: str, server: str, workers: int) -> set[int]:
    """The pids of the workers whose session to ``server`` is up, once there are ``workers``
    of them (each ``/_lifecycle`` on a fresh connection is answered by whichever worker
    accepts it)."""
    up: set[int] = set()
    headers = {"Authorization": f"Bearer {ADMIN}"}
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=10) as http:
        with anyio.fail_after(90):
            while True:
                body = (await http.get(f"{url}/_lifecycle")).json()
                if any(
                    (e["component"], e["trigger"]) == (f"mcp:{server}", "up")
                    for e in body["events"]
                ):
                    up.add(body["pid"])
                if len(up) == workers:
                    return up
                await anyio.sleep(0.05)


async def test_one_client_across_two_workers(tmp_path: Path, start_gateway: Any) -> None:
    async with mcp_servers("alpha") as servers:
        mcp = {
            "servers": [{"name": "alpha", "url": servers["alpha"].url}],
            "store_path": str(tmp_path / "registry.sqlite"),
        }
        config = gateway_config(tmp_path / "gw.yaml", mcp, log_level="warning")
        group = start_gateway("serve", args=["--config", str(config), "--workers", "2"])
        await anyio.to_thread.run_sync(group.wait_ready, 120.0)
        assert len(await wait_workers_serving(group.url, "alpha", 2)) == 2

        for mode in ("2026-07-28", "legacy"):
            async with mcp_client(f"{group.url}/mcp", mode=mode, fresh_connections=True) as c:
                for i in range(4):
                    names = [t.name for t in (await c.list_tools()).tools]
                    assert "alpha.echo" in names, (mode, names)
                    echoed = await c.call_tool("alpha.echo", {"text": f"{mode}-{i}"})
                    assert tool_text(echoed) == f"alpha:{mode}-{i}"
                    failed = await c.call_tool("alpha.fail", {"reason": str(i)})
                    assert failed.is_error and f"failed on purpose: {i}" in tool_text(failed)
                    with pytest.raises(MCPError) as invalid:
                        await c.call_tool("alpha.add", {"a": "one", "b": 2})
                    assert invalid.value.code == -32602

        # A listen stream is one request on one worker; the change is made through another
        # request (on either worker) and every worker's session to alpha sees it.
        async with (
            mcp_client(f"{group.url}/mcp", fresh_connections=True) as c,
            c.listen(tools_list_changed=True) as subscription,
        ):
            assert tool_text(await c.call_tool("alpha.grow", {"tool": "extra"})) == "grown"
            with anyio.fail_after(30):
                async for _event in subscription:
                    break
            # The next request may land on the other worker: it refreshes on its own.
            await wait_tools(c, lambda names: "alpha.extra" in names)
