"""The registry through ``/_admin/mcp/servers``: durable (SQLite, etcd), guarded, redacted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from routeiq.mcp.admin import McpServerChange, McpServerList, McpServerView
from tests.mcp.conftest import ServeFactory, mcp_client, wait_tools
from tests.mcp.servers import mcp_servers, tool_text
from tests.support.etcd import EtcdServer, find_etcd

pytestmark = pytest.mark.anyio

SECRET = "upstream-secret-value-42"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    binary = find_etcd()
    if binary is None:
        pytest.skip("no etcd binary (scripts/setup dev installs one)")
    server = EtcdServer(binary, tmp_path / "etcd" / "data")
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_sqlite_registry_admin_api_and_restart(serve_gateway: ServeFactory, tmp_path) -> None:
    store = str(tmp_path / "registry.sqlite")
    async with mcp_servers("alpha", "beta") as servers:
        mcp = {
            "servers": [{"name": "beta", "url": servers["beta"].url}],
            "store_path": store,
        }
        env = {"UPSTREAM_TOKEN": SECRET}
        async with serve_gateway(mcp, env=env) as gw, gw.admin() as admin:
            body = {
                "name": "alpha",
                "url": servers["alpha"].url,
                "headers": {
                    "Authorization": f"Bearer {SECRET}",
                    "X-Token": "os.environ/UPSTREAM_TOKEN",
                },
                "tools_allow": ["echo", "add"],
            }
            created = await admin.post("/_admin/mcp/servers", json=body)
            assert created.status_code == 201, created.text
            assert SECRET not in created.text
            McpServerChange.model_validate(created.json())  # what /openapi.json says
            assert created.json()["headers"] == {
                "Authorization": "<redacted>",
                "X-Token": "<redacted>",
            }

            again = await admin.post("/_admin/mcp/servers", json=body)
            assert again.status_code == 409

            inside = await admin.post(
                "/_admin/mcp/servers", json={"name": "inside", "url": "http://10.1.2.3/mcp"}
            )
            assert inside.status_code == 400
            assert "allow_hosts" in inside.json()["error"]
            local = await admin.post(
                "/_admin/mcp/servers", json={"name": "local", "url": "http://localhost:1/mcp"}
            )
            assert local.status_code == 400
            bad = await admin.post(
                "/_admin/mcp/servers", json={"name": "Bad.Name", "url": "ftp://x"}
            )
            assert bad.status_code == 400
            assert "name" in bad.json()["error"] and "url" in bad.json()["error"]
            declared = await admin.delete("/_admin/mcp/servers/beta")
            assert declared.status_code == 409
            unauthorized = await admin.get(
                "/_admin/mcp/servers", headers={"Authorization": "Bearer wrong"}
            )
            assert unauthorized.status_code == 401

            async with mcp_client(gw.mcp_url) as c:
                names = await wait_tools(c, lambda n: "alpha.echo" in n and "beta.echo" in n)
                assert [n for n in names if n.startswith("alpha.")] == ["alpha.add", "alpha.echo"]
                assert tool_text(await c.call_tool("alpha.echo", {"text": "x"})) == "alpha:x"

            listed = await admin.get("/_admin/mcp/servers")
            assert listed.status_code == 200
            assert SECRET not in listed.text
            McpServerList.model_validate(listed.json())
            McpServerView.model_validate((await admin.get("/_admin/mcp/servers/alpha")).json())
            rows = {row["name"]: row for row in listed.json()["servers"]}
            assert rows["alpha"]["source"] == "registry" and rows["beta"]["source"] == "config"
            assert rows["alpha"]["status"] == "up"
            events = [e.to_dict() for e in gw.gateway.events.events]
            assert any(e.get("trigger") == "mcp_server_added" for e in events)
            assert SECRET not in str(events)

        # Draining closed the sessions and the store.
        drained = [(e.component, e.trigger, e.ok) for e in gw.gateway.events.events]
        assert drained[-1] == (None, "stop", True)
        assert ("mcp:alpha", "down", True) in drained
        assert ("mcp_registry", None, True) in drained  # the undo ran

        # A new gateway on the same file serves what was registered.
        async with (
            serve_gateway(mcp, name="gw2", env=env) as gw,
            gw.admin() as admin,
            mcp_client(gw.mcp_url) as c,
        ):
            await wait_tools(c, lambda n: "alpha.echo" in n)
            gone = await admin.delete("/_admin/mcp/servers/alpha")
            assert gone.status_code == 204
            names = await wait_tools(c, lambda n: "alpha.echo" not in n)
            assert "beta.echo" in names


async def test_etcd_registry_across_replicas_and_restart(
    serve_gateway: ServeFactory, etcd: EtcdServer
) -> None:
    leadership = {
        "backend": "etcd",
        "etcd_endpoints": [f"{etcd.host}:{etcd.port}"],
        "key_prefix": "/mcp-test",
    }
    async with mcp_servers("alpha") as servers:
        async with (
            serve_gateway({}, name="one", leadership=leadership) as one,
            serve_gateway({}, name="two", leadership=leadership) as two,
        ):
            async with one.admin() as admin:
                body = {"name": "alpha", "url": servers["alpha"].url}
                created = await admin.put("/_admin/mcp/servers/alpha", json=body)
                assert created.status_code in (201, 202), created.text
            async with mcp_client(two.mcp_url) as c:
                await wait_tools(c, lambda n: "alpha.echo" in n)
                assert tool_text(await c.call_tool("alpha.echo", {"text": "2"})) == "alpha:2"

        async with serve_gateway({}, name="three", leadership=leadership) as three:
            async with mcp_client(three.mcp_url) as c:
                await wait_tools(c, lambda n: "alpha.echo" in n)
            assert [row["name"] for row in three.mcp.view()] == ["alpha"]
