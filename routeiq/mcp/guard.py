"""The SSRF guard: a registered MCP server may not point into the gateway's own network.

A URL's host must be a public address, unless it matches the configured allow list (a host
name, an IP address or a CIDR). Checked twice: when a server is registered (the literal host)
and before every connection (the addresses the name resolves to, so a name that later resolves
to a private address is refused too). Not guaranteed: redirects are not followed by the MCP
client beyond the same origin, so they cannot leave the checked host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

import anyio

from routeiq.errors import GatewayError

__all__ = ["HostGuard", "UrlRefused"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlRefused(GatewayError, ValueError):
    """A URL points at a host the SSRF guard does not allow."""


class HostGuard:
    def __init__(self, allow: Iterable[str]) -> None:
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

    async def check_resolved(self, url: str) -> None:
        """Before connecting: every address the host resolves to must be allowed."""
        host = self.check_url(url)
        if host in self._names:
            return
        try:
            infos = await anyio.getaddrinfo(host, None)
        except OSError as exc:
            raise UrlRefused(f"cannot resolve {host!r}: {exc}") from exc
        for info in infos:
            self._check_address(host, ipaddress.ip_address(info[4][0]))

    def _check_address(self, host: str, address: Address) -> None:
        if any(address in network for network in self._networks):
            return
        if not address.is_global or address.is_multicast:
            raise UrlRefused(self._refusal(host, f"resolves to non-public address {address}"))

    @staticmethod
    def _refusal(host: str, why: str) -> str:
        return f"host {host!r} {why}; add it to routeiq.mcp.allow_hosts to allow registering it"
