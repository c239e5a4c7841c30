"""The MCP gateway end to end: real MCP servers (the SDK, on loopback) behind ``/mcp``."""

from __future__ import annotations

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.mcp.conftest import ServeFactory, mcp_client, wait_tools
from tests.mcp.servers import McpTestServer, mcp_servers, tool_text

pytestmark = pytest.mark.anyio


async def test_list_call_errors_and_validation(serve_gateway: ServeFactory, tmp_path) -> None:
    async with mcp_servers("alpha", "beta") as servers:
        mcp = {
            "servers": [
                {"name": "alpha", "url": servers["alpha"].url},
                {"name": "beta", "url": servers["beta"].url, "tools_deny": ["slow", "grow"]},
            ],
            "store_path": str(tmp_path / "registry.sqlite"),
            "call_timeout_s": 0.5,
        }
        async with serve_gateway(mcp) as gw, mcp_client(gw.mcp_url) as c:
            spans = InMemorySpanExporter()
            gw.gateway.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
            names = await wait_tools(c, lambda n: "beta.echo" in n and "alpha.echo" in n)
            assert names == [
                "alpha.add", "alpha.echo", "alpha.fail", "alpha.grow", "alpha.slow",
                "beta.add", "beta.echo", "beta.fail",
            ]  # fmt: skip

            assert tool_text(await c.call_tool("alpha.echo", {"text": "hi"})) == "alpha:hi"
            assert tool_text(await c.call_tool("beta.echo", {"text": "hi"})) == "beta:hi"
            added = await c.call_tool("beta.add", {"a": 2, "b": 3})
            assert added.structured_content == {"result": 5}

            echo = [sp for sp in spans.get_finished_spans() if sp.name == "tools/call alpha.echo"]
            assert len(echo) == 1
            assert echo[0].attributes is not None
            assert echo[0].attributes["gen_ai.operation.name"] == "execute_tool"
            assert echo[0].attributes["gen_ai.tool.name"] == "alpha.echo"
            assert echo[0].attributes["mcp.method.name"] == "tools/call"

            failed = await c.call_tool("alpha.fail", {"reason": "because"})
            assert failed.is_error
            assert "failed on purpose: because" in tool_text(failed)

            with pytest.raises(MCPError) as invalid:
                await c.call_tool("alpha.add", {"a": "two"})
            assert invalid.value.code == -32602
            assert "alpha.add" in invalid.value.message

            with pytest.raises(MCPError) as unknown:
                await c.call_tool("beta.slow", {"seconds": 0})
            assert unknown.value.code == -32602

            with pytest.raises(MCPError) as timed_out:
                await c.call_tool("alpha.slow", {"seconds": 5})
            assert timed_out.value.code == -32001

            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"{gw.url}/metrics")).text
            calls = "gateway_mcp_tool_calls_total"
            assert f'{calls}{{outcome="ok",server="alpha",tool="echo"}} 1.0' in metrics
            assert 'outcome="tool_error",server="alpha",tool="fail"} 1.0' in metrics
            assert 'outcome="invalid_arguments",server="alpha",tool="add"} 1.0' in metrics
            assert 'outcome="timeout",server="alpha",tool="slow"} 1.0' in metrics
            assert 'gateway_mcp_server_up{server="beta"} 1.0' in metrics

            # A server's list_changed refreshes the union and is passed on to subscribers.
            async with c.listen(tools_list_changed=True) as subscription:
                assert tool_text(await c.call_tool("alpha.grow", {"tool": "extra"})) == "grown"
                with anyio.fail_after(15):
                    async for _event in subscription:
                        break
            names = sorted(t.name for t in (await c.list_tools()).tools)
            assert "alpha.extra" in names
            assert tool_text(await c.call_tool("alpha.extra", {})) == "alpha:extra"

            async with httpx.AsyncClient() as http:
                ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
                reply = await http.post(gw.mcp_url, json=ping)
                assert reply.status_code == 401
                assert "key" in reply.json()["error"]["message"]
                wrong = await http.post(
                    gw.mcp_url, json=ping, headers={"Authorization": "Bearer not-the-key"}
                )
                assert wrong.status_code == 401


async def test_down_server_never_blocks_and_comes_back(
    serve_gateway: ServeFactory, tmp_path
) -> None:
    async with mcp_servers("alpha") as servers:
        beta = McpTestServer("beta")  # not started: down when the gateway starts
        servers["beta"] = beta
        mcp = {
            "servers": [
                {"name": "alpha", "url": servers["alpha"].url},
                {"name": "beta", "url": servers["beta"].url},
            ],
            "store_path": str(tmp_path / "r.sqlite"),
            "health_interval_s": 0.2,
            "reconnect_initial_s": 0.05,
            "reconnect_max_s": 0.3,
        }
        async with serve_gateway(mcp) as gw, mcp_client(gw.mcp_url) as c:
            names = await wait_tools(c, lambda n: "alpha.echo" in n)
            assert not [n for n in names if n.startswith("beta.")]
            assert tool_text(await c.call_tool("alpha.echo", {"text": "up"})) == "alpha:up"
            view = {row["name"]: row for row in gw.mcp.view()}
            assert view["beta"]["status"] == "down"
            assert view["beta"]["last_error"]

            await beta.start()
            await wait_tools(c, lambda n: "beta.echo" in n)
            assert tool_text(await c.call_tool("beta.echo", {"text": "up"})) == "beta:up"

            await beta.stop()  # killed: its tools leave the union, alpha's stay
            names = await wait_tools(c, lambda n: "beta.echo" not in n)
            assert "alpha.echo" in names
            assert tool_text(await c.call_tool("alpha.echo", {"text": "still"})) == "alpha:still"
            await beta.start()  # restarted on the same port: its tools come back
            await wait_tools(c, lambda n: "beta.echo" in n)
            assert tool_text(await c.call_tool("beta.echo", {"text": "back"})) == "beta:back"

            events = [
                (e.component, e.trigger)
                for e in gw.gateway.events.events
                if e.component == "mcp:beta" and e.trigger in ("up", "down")
            ]
            assert events == [
                ("mcp:beta", "down"), ("mcp:beta", "up"), ("mcp:beta", "down"), ("mcp:beta", "up")
            ]  # fmt: skip
            async with httpx.AsyncClient() as http:
                startup = (await http.get(f"{gw.url}/_lifecycle/startup")).json()
            assert "mcp_registry" in str(startup)
