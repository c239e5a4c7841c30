"""The ``routeiq.mcp`` config section and the shape of one registered MCP server.

A server is a name (``[a-z][a-z0-9_-]*``, no dots: the gateway namespaces tools as
``server.tool`` and splits at the first dot, so two servers' tools can never collide), the URL
of a streamable-HTTP MCP endpoint, request headers (values may be ``os.environ/NAME``
references, resolved when the gateway connects) and tool allow/deny lists (``fnmatch``
patterns). The same model validates config entries and admin API bodies.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from routeiq.config.problems import require_unique

__all__ = ["ENV_REF_PREFIX", "McpServerSpec", "McpSettings"]

ENV_REF_PREFIX = "os.environ/"
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"


class McpServerSpec(BaseModel):
    """One registered MCP server."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    url: str = Field(min_length=1, max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    tools_allow: tuple[str, ...] | None = None
    tools_deny: tuple[str, ...] = ()
    call_timeout_s: float | None = Field(default=None, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials: put them in headers")
        return url

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if not name or any(c in name for c in " :\r\n"):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
        return headers

    def exposes(self, tool: str) -> bool:
        """Whether ``tool`` passes this server's allow and deny lists."""
        if self.tools_allow is not None and not any(
            fnmatch.fnmatchcase(tool, p) for p in self.tools_allow
        ):
            return False
        return not any(fnmatch.fnmatchcase(tool, p) for p in self.tools_deny)

    def public_view(self) -> dict[str, object]:
        """What the admin API shows: header values never leave the gateway."""
        return {
            "name": self.name,
            "url": self.url,
            "headers": dict.fromkeys(sorted(self.headers), "<redacted>"),
            "tools_allow": None if self.tools_allow is None else list(self.tools_allow),
            "tools_deny": list(self.tools_deny),
            "call_timeout_s": self.call_timeout_s,
        }


class McpSettings(BaseModel):
    """``routeiq.mcp``: config-declared servers, where run-time ones are stored, safety limits.

    Servers declared here are part of the config (read-only through the admin API); servers
    registered at run time live in the durable store. The registry is the union of both.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    servers: tuple[McpServerSpec, ...] = ()
    # ``local`` backend: the SQLite file of the registry (default: in a temp dir, with a warning).
    store_path: Path | None = None
    # SSRF guard: hosts (names, IPs or CIDRs) that may be registered even though they are
    # loopback, private or link-local. Public addresses are always allowed.
    allow_hosts: tuple[str, ...] = ()
    call_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    health_interval_s: float = Field(default=2.0, gt=0)
    reconnect_initial_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)
    poll_s: float = Field(default=0.25, gt=0, description="registry poll period")

    @field_validator("servers")
    @classmethod
    def _unique(cls, servers: tuple[McpServerSpec, ...]) -> tuple[McpServerSpec, ...]:
        require_unique("MCP server", (s.name for s in servers))
        return servers

    @model_validator(mode="after")
    def _backoff(self) -> McpSettings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self

    @model_validator(mode="after")
    def _guarded(self) -> McpSettings:
        if not self.servers:
            return self  # and the config imports nothing of the MCP gateway
        from routeiq.mcp.guard import HostGuard, UrlRefused

        guard = HostGuard(self.allow_hosts)
        for index, server in enumerate(self.servers):
            try:
                guard.check_url(server.url)
            except UrlRefused as exc:
                raise ValueError(f"servers[{index}].url: {exc}") from None
        return self
