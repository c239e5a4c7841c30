"""Connections to a registered MCP server go to the addresses the SSRF guard checked.

``PinnedTransport`` is the ``httpx2`` transport of an upstream session's HTTP client. A request
for the registered host is sent to one of the checked addresses: its URL's host is replaced by
the address, the ``Host`` header keeps the name, and with https the TLS server name (SNI, and
the name the certificate is verified against) stays the name too, through httpcore's
``sni_hostname`` request extension. The addresses are tried in order; a connection failure
moves on to the next one (a dual-stack name whose first address is unreachable still works),
and the last one that worked is tried first from then on. A request for any other host is
refused: the session never talks to a host that was not checked.

Guaranteed: the name is never resolved here, so a second DNS answer cannot redirect the
connection. Not guaranteed: environment proxies (``HTTP_PROXY``...) are not used, since a
proxy would resolve the name itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

import httpx2

__all__ = ["PinnedTransport"]


class PinnedTransport(httpx2.AsyncBaseTransport):
    def __init__(
        self,
        url: str,
        addresses: Sequence[str],
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("PinnedTransport needs at least one checked address")
        self._host = httpx2.URL(url).raw_host
        self._addresses = list(addresses)
        self._transport = transport if transport is not None else httpx2.AsyncHTTPTransport()

    @property
    def addresses(self) -> tuple[str, ...]:
        """The checked addresses, the one to try first first."""
        return tuple(self._addresses)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.raw_host != self._host:
            raise httpx2.ConnectError(
                f"refused: {request.url.host!r} is not the checked host "
                f"{self._host.decode('ascii')!r}",
                request=request,
            )
        extensions = dict(request.extensions)
        if request.url.scheme == "https":
            extensions.setdefault("sni_hostname", self._host.decode("ascii"))
        failed: list[httpx2.TransportError] = []
        for address in list(self._addresses):
            pinned = httpx2.Request(
                request.method,
                request.url.copy_with(host=address),
                headers=request.headers,
                stream=request.stream,
                extensions=extensions,
            )
            try:
                response = await self._transport.handle_async_request(pinned)
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
                failed.append(exc)
                continue
            if address != self._addresses[0]:
                self._addresses.remove(address)
                self._addresses.insert(0, address)
            return response
        raise failed[-1]

    async def __aenter__(self) -> Self:
        await self._transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self._transport.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        await self._transport.aclose()
