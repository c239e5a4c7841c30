"""Where run-time registered MCP servers live: a SQLite file (``local``) or etcd (``etcd``).

Both stores hold ``name → McpServerSpec`` and offer the same three operations: ``load`` (every
replica polls it), ``submit_put`` and ``submit_delete``.

- ``SqliteStore``: one file, shared by the workers of one host; a change is committed in one
  transaction and visible to every worker at its next poll. Survives restarts.
- ``EtcdStore``: the registry is ``<prefix>/mcp/servers/<name>``, written only by the leader,
  each write a transaction comparing the leader's fencing token (``EtcdElection.fenced_put``),
  so a deposed leader cannot write. Any replica submits a change as a request key
  ``<prefix>/mcp/requests/<id>``; the leader applies requests in key order (``apply_requests``)
  and deletes them, also fenced. Not guaranteed: a request submitted while no leader exists
  waits until one is elected.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
from pydantic import ValidationError

from routeiq.config.mcp import McpServerSpec
from routeiq.errors import GatewayError

__all__ = ["EtcdStore", "RegistryStore", "SqliteStore", "StoreUnavailable"]

Servers = Mapping[str, McpServerSpec]


class StoreUnavailable(GatewayError):
    """The registry store cannot be read or written right now."""


class RegistryStore(Protocol):
    async def load(self) -> dict[str, McpServerSpec]: ...

    async def submit_put(self, spec: McpServerSpec) -> None: ...

    async def submit_delete(self, name: str) -> None: ...


def _encode(spec: McpServerSpec) -> str:
    return spec.model_dump_json()


def _decode(raw: str | bytes) -> McpServerSpec | None:
    try:
        return McpServerSpec.model_validate_json(raw)
    except ValidationError:
        return None  # written by a newer or broken writer: skip it rather than stop serving


class SqliteStore:
    """The registry in one SQLite file; every call opens its own connection.

    Calls run on the event loop: they touch a handful of rows in a local file (well under a
    millisecond), and a lock held by another worker waits at most ``timeout_s`` before the
    call fails with ``StoreUnavailable`` (the follower retries at its next poll).
    """

    def __init__(self, path: Path, *, timeout_s: float = 0.25) -> None:
        self.path = path
        self._timeout_s = timeout_s

    def create(self) -> None:
        """Create the file and table if needed."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
            try:
                with db:
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS mcp_servers (name TEXT PRIMARY KEY, spec TEXT)"
                    )
            finally:
                db.close()
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"MCP registry {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level="IMMEDIATE")

    async def load(self) -> dict[str, McpServerSpec]:
        return self._load()

    def _load(self) -> dict[str, McpServerSpec]:
        try:
            db = self._connect()
            try:
                rows = db.execute("SELECT name, spec FROM mcp_servers ORDER BY name").fetchall()
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"MCP registry {self.path}: {exc}") from exc
        specs = {name: _decode(raw) for name, raw in rows}
        return {name: spec for name, spec in specs.items() if spec is not None}

    async def submit_put(self, spec: McpServerSpec) -> None:
        self._write(spec.name, _encode(spec))

    async def submit_delete(self, name: str) -> None:
        self._write(name, None)

    def _write(self, name: str, raw: str | None) -> None:
        try:
            db = self._connect()
            try:
                with db:
                    if raw is None:
                        db.execute("DELETE FROM mcp_servers WHERE name = ?", (name,))
                    else:
                        db.execute(
                            "INSERT INTO mcp_servers (name, spec) VALUES (?, ?) "
                            "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec",
                            (name, raw),
                        )
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"MCP registry {self.path}: {exc}") from exc


FencedWrite = Callable[[str, str | None], Awaitable[None]]


class EtcdStore:
    """The registry in etcd; ``client`` is an ``aetcd.Client`` owned by the caller."""

    def __init__(self, client: Any, *, prefix: str, timeout_s: float) -> None:
        self._client = client
        self._servers = f"{prefix.rstrip('/')}/mcp/servers/"
        self._requests = f"{prefix.rstrip('/')}/mcp/requests/"
        self._timeout_s = timeout_s

    def server_key(self, name: str) -> str:
        return f"{self._servers}{name}"

    async def load(self) -> dict[str, McpServerSpec]:
        found = await self._call(self._client.get_prefix(self._servers.encode()))
        specs = {}
        for kv in found:
            spec = _decode(bytes(kv.value))
            if spec is not None:
                specs[spec.name] = spec
        return specs

    async def submit_put(self, spec: McpServerSpec) -> None:
        await self._request({"op": "put", "spec": json.loads(_encode(spec))})

    async def submit_delete(self, name: str) -> None:
        await self._request({"op": "delete", "name": name})

    async def _request(self, body: dict[str, Any]) -> None:
        # Time-ordered ids: the leader applies requests in submission order.
        key = f"{self._requests}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        await self._call(self._client.put(key.encode(), json.dumps(body).encode()))

    async def apply_requests(self, fenced_put: FencedWrite) -> int:
        """Leader only: apply pending requests with fenced writes; returns how many."""
        found = await self._call(self._client.get_prefix(self._requests.encode()))
        applied = 0
        for kv in sorted(found, key=lambda item: bytes(item.key)):
            key = bytes(kv.key).decode()
            try:
                body = json.loads(bytes(kv.value))
                if body.get("op") == "put":
                    spec = McpServerSpec.model_validate(body["spec"])
                    await fenced_put(self.server_key(spec.name), _encode(spec))
                elif body.get("op") == "delete":
                    await fenced_put(self.server_key(str(body["name"])), None)
            except (ValueError, KeyError, TypeError, ValidationError):
                pass  # a malformed request is dropped below; it can never become valid
            await fenced_put(key, None)
            applied += 1
        return applied

    async def _call(self, request: Awaitable[Any]) -> Any:
        import aetcd.exceptions

        try:
            with anyio.fail_after(self._timeout_s):
                return await request
        except (TimeoutError, OSError, aetcd.exceptions.ClientError) as exc:
            raise StoreUnavailable(f"etcd: {exc}") from exc
