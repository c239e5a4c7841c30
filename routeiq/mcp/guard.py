"""The SSRF guard: a registered MCP server may not point into the gateway's own network.

A URL's host must be a public address, unless it matches the configured allow list (a host
name, an IP address or a CIDR). Checked twice: when a server is registered (the literal host)
and before every connection (the addresses the name resolves to, so a name that later resolves
to a private address is refused too). ``check_resolved`` returns the addresses it checked and
the connection is made to those (``routeiq.mcp.pinning``), never to a second resolution of the
name: a name that answers a public address to the check and a private one to the connection
(DNS rebinding) reaches only the public one. A name on the allow list is resolved and pinned
the same way, without the address check. Not guaranteed: redirects are not followed by the MCP
client beyond the same origin, so they cannot leave the checked host.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import anyio

from routeiq.errors import GatewayError

__all__ = ["HostGuard", "Resolver", "UrlRefused", "system_resolver"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Awaitable[Sequence[str]]]


async def system_resolver(host: str) -> list[str]:
    """The addresses ``host`` resolves to (the system's resolver), in its order, once each."""
    infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class UrlRefused(GatewayError, ValueError):
    """A URL points at a host the SSRF guard does not allow."""


class HostGuard:
    def __init__(self, allow: Iterable[str], *, resolve: Resolver = system_resolver) -> None:
        self._resolve = resolve
        self._names: set[str] = set()
        self._networks: list[Network] = []
        for entry in allow:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._names.add(entry.lower().rstrip("."))

    def check_url(self, url: str) -> str:
        """The URL's host, if it may be registered; else ``UrlRefused`` saying why."""
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        if not host:
            raise UrlRefused(f"{url!r} has no host")
        if host in self._names:
            return host
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
                raise UrlRefused(self._refusal(host, "is a local name")) from None
            return host
        self._check_address(host, address)
        return host

    async def check_resolved(self, url: str) -> tuple[str, ...]:
        """Before connecting: the addresses to connect to, every one of them allowed.

        Connect to these, not to the name: resolving it again may answer differently."""
        host = self.check_url(url)
        try:
            return (str(ipaddress.ip_address(host)),)
        except ValueError:
            pass
        try:
            addresses = tuple(await self._resolve(host))
        except OSError as exc:
            raise UrlRefused(f"cannot resolve {host!r}: {exc}") from exc
        if not addresses:
            raise UrlRefused(f"cannot resolve {host!r}: no addresses")
        for address in addresses:
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                raise UrlRefused(f"{host!r} resolved to {address!r}, not an address") from None
            if host not in self._names:
                self._check_address(host, parsed)
        return addresses

    def _check_address(self, host: str, address: Address) -> None:
        if any(address in network for network in self._networks):
            return
        if not address.is_global or address.is_multicast:
            raise UrlRefused(self._refusal(host, f"resolves to non-public address {address}"))

    @staticmethod
    def _refusal(host: str, why: str) -> str:
        return f"host {host!r} {why}; add it to routeiq.mcp.allow_hosts to allow registering it"
