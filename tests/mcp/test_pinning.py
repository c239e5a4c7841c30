"""Connections go to the address the SSRF guard checked, never to a second DNS answer.

The resolver is injected: it answers an allowed loopback address (``127.0.0.2``) to the first
question and ``127.0.0.1`` (not allowed) to any later one, as a rebinding name would. Listeners
on ``127.0.0.2`` record what reaches them. The names used (``*.rebind.test``, and ``localhost``
where the SDK's server wants a local ``Host``) do not lead to ``127.0.0.2`` through the system's
resolver, so only a pinned connection can reach the listeners.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from anyio.abc import SocketStream
from anyio.streams.tls import TLSStream

from routeiq.config.mcp import McpServerSpec, McpSettings
from routeiq.lifecycle.clock import ManualClock
from routeiq.lifecycle.events import EventLog
from routeiq.mcp.guard import HostGuard, UrlRefused
from routeiq.mcp.pinning import PinnedTransport
from routeiq.mcp.upstream import UpstreamSession
from tests.mcp.servers import McpTestServer, tool_text
from tests.support.etcd import make_tls

pytestmark = pytest.mark.anyio

CHECKED = "127.0.0.2"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\npinned"


class Rebinding:
    """A resolver: ``CHECKED`` the first time, ``127.0.0.1`` after that."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str) -> Sequence[str]:
        self.asked.append(host)
        return [CHECKED] if len(self.asked) == 1 else ["127.0.0.1"]


@asynccontextmanager
async def listener(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, list[str]]]:
    """A one-answer HTTP server on ``CHECKED``: its port, and the ``Host`` of each request."""
    hosts: list[str] = []

    async def handle(raw: SocketStream) -> None:
        async with raw:
            stream: SocketStream | TLSStream = raw
            if tls is not None:
                try:
                    stream = await TLSStream.wrap(raw, server_side=True, ssl_context=tls)
                except (ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream):
                    return  # the client refused the certificate
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            fields = (line.partition(":") for line in head.decode().split("\r\n"))
            hosts.extend(value.strip() for key, _, value in fields if key.lower() == "host")
            await stream.send(ANSWER)

    async with (
        await anyio.create_tcp_listener(local_host=CHECKED) as tcp,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(tcp.serve, handle)
        yield tcp.extra(anyio.abc.SocketAttribute.local_port), hosts
        tg.cancel_scope.cancel()


async def test_a_rebinding_name_reaches_only_the_checked_address() -> None:
    resolve = Rebinding()
    guard = HostGuard([CHECKED], resolve=resolve)
    async with listener() as (port, hosts):
        url = f"http://mcp.rebind.test:{port}/mcp"
        addresses = await guard.check_resolved(url)
        assert addresses == (CHECKED,)
        # An address that refuses first: the next checked one is used, and kept first.
        pinned = PinnedTransport(url, ("127.0.0.3", *addresses))
        async with httpx2.AsyncClient(transport=pinned, timeout=10) as http:
            reply = await http.get(url)
            assert (reply.status_code, reply.text) == (200, "pinned")
            assert pinned.addresses == (CHECKED, "127.0.0.3")
            with pytest.raises(httpx2.ConnectError, match="not the checked host"):
                await http.get(f"http://elsewhere.rebind.test:{port}/mcp")
        assert hosts == [f"mcp.rebind.test:{port}"]  # the name, not the address
        assert resolve.asked == ["mcp.rebind.test"]  # the connection asked nobody
        with pytest.raises(UrlRefused, match=r"non-public address 127\.0\.0\.1"):
            await guard.check_resolved(url)  # the next answer would have been refused


async def test_tls_still_verifies_the_name(tmp_path: Path) -> None:
    certs = make_tls(tmp_path, server_name="DNS:mcp.rebind.test")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certs.server_cert, certs.server_key)
    client = ssl.create_default_context(cafile=str(certs.ca_cert))
    async with listener(server) as (port, hosts):

        def transport(url: str) -> PinnedTransport:
            inner = httpx2.AsyncHTTPTransport(verify=client)
            return PinnedTransport(url, (CHECKED,), transport=inner)

        url = f"https://mcp.rebind.test:{port}/mcp"
        async with httpx2.AsyncClient(transport=transport(url), timeout=10) as http:
            reply = await http.get(url)
        assert (reply.status_code, reply.text) == (200, "pinned")
        # The same address under a name the certificate does not carry: refused.
        other = f"https://other.rebind.test:{port}/mcp"
        async with httpx2.AsyncClient(transport=transport(other), timeout=10) as http:
            with pytest.raises(httpx2.ConnectError, match=r"not valid for .other\.rebind\.test"):
                await http.get(other)
        assert hosts == [f"mcp.rebind.test:{port}"]


async def test_an_upstream_session_connects_to_the_checked_address() -> None:
    resolve = Rebinding()
    server = McpTestServer("alpha", host=CHECKED)
    await server.start()
    try:
        # The system resolver sends "localhost" to 127.0.0.1, where nothing listens on this port.
        spec = McpServerSpec(name="alpha", url=f"http://localhost:{server.port}/mcp")
        settings = McpSettings(allow_hosts=("localhost",))
        up = anyio.Event()

        def changed() -> None:
            if session.up:
                up.set()

        session = UpstreamSession(
            spec,
            settings=settings,
            guard=HostGuard(settings.allow_hosts, resolve=resolve),
            env={},
            events=EventLog(ManualClock(), worker_id="w1", pid=1),
            on_change=changed,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(session.run)
            with anyio.fail_after(30):
                await up.wait()
            result = await session.call("echo", {"text": "pinned"}, timeout_s=10)
            assert tool_text(result) == "alpha:pinned"
            assert resolve.asked == ["localhost"]
            session.stop()
    finally:
        await server.stop()
