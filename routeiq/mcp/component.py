"""The MCP gateway as a lifecycle component: built in a startup phase, served, drained.

``McpGateway.open`` (startup, component ``mcp_registry``) opens the durable store and reads
the registry: with the ``etcd`` backend ``<prefix>/mcp/servers/*``, with ``local`` a SQLite
file (``routeiq.mcp.store_path``; without one, a file in the temp dir and a warning event).
A store that cannot be read at startup is not fatal: the registry starts from the config's
servers and the follower catches up. ``services`` are started in the serve phase under the
supervisor: ``mcp-endpoint`` (the ``/mcp`` session manager), ``mcp-registry`` (polls the store
every ``poll_s``, applies changes, and on the etcd leader applies submitted changes under the
fencing token) and one ``mcp:<server>`` session per registered server, started and stopped as
the registry changes. Draining cancels them all; ``close`` (the undo) closes the store.

The registry is the union of the config's servers (read-only at run time) and the store's.
Every change of the registry is a ``config`` event (``mcp_server_added``/``_updated``/
``_removed``), never showing header values.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import TaskStatus

from routeiq.config.mcp import McpServerSpec, McpSettings
from routeiq.errors import GatewayError, LeadershipLost, describe
from routeiq.leadership.election import ElectionUnavailable
from routeiq.leadership.service import etcd_endpoint
from routeiq.lifecycle.clock import Clock, SystemClock
from routeiq.lifecycle.events import EventKind, EventLog
from routeiq.lifecycle.supervisor import Service, Supervisor
from routeiq.mcp.aggregator import McpAggregator
from routeiq.mcp.guard import HostGuard
from routeiq.mcp.metrics import McpMetricsProjection
from routeiq.mcp.store import EtcdStore, RegistryStore, SqliteStore, StoreUnavailable
from routeiq.mcp.upstream import UpstreamSession

if TYPE_CHECKING:
    from routeiq.assembly.gateway import Gateway
    from routeiq.config.model import GatewayConfig
    from routeiq.observability.metrics import GatewayMetrics

__all__ = ["McpGateway", "RegistryConflict", "default_store_path", "open_mcp"]

Source = Literal["config", "registry"]


class RegistryConflict(GatewayError):
    """A change the registry refuses (say, editing a server that the config declares)."""


@dataclass(frozen=True, slots=True)
class Entry:
    spec: McpServerSpec
    source: Source


def default_store_path(config: GatewayConfig) -> Path:
    """One registry file per config source and host, shared by the workers of one master."""
    digest = hashlib.sha256(config.source.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"routeiq-mcp-{digest}.sqlite"


class McpGateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        events: EventLog,
        env: Mapping[str, str],
        metrics: GatewayMetrics | None,
        tracer_provider: Any,
        leadership: Callable[[], Any] = lambda: None,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self.settings: McpSettings = config.routeiq.mcp
        self._config = config
        self._events = events
        self._env = env
        self._metrics = metrics
        self._leadership = leadership
        self.guard = HostGuard(self.settings.allow_hosts)
        self._declared = {s.name: s for s in self.settings.servers}
        self._stored: dict[str, McpServerSpec] = {}
        self.entries: dict[str, Entry] = {}
        self.sessions: dict[str, UpstreamSession] = {}
        self._generation: dict[str, int] = {}
        self._store: RegistryStore | None = None
        self._etcd_client: Any = None
        self._supervisor: Supervisor | None = None
        self._poll_now = anyio.Event()
        self._synced = anyio.Event()
        self.aggregator = McpAggregator(
            lambda: self.sessions,
            default_timeout_s=self.settings.call_timeout_s,
            metrics=metrics,
            tracer_provider=tracer_provider,
        )

    @property
    def backend(self) -> str:
        return self._config.routeiq.leadership.backend

    # --- startup and teardown -----------------------------------------------------------------

    async def open(self) -> None:
        for spec in self._declared.values():
            self.guard.check_url(spec.url)  # a config that points inside is a config error
        if self.backend == "etcd":
            leadership = self._config.routeiq.leadership
            # The one client builder: TLS, user/password and the bounded reconnect backoff.
            endpoint = etcd_endpoint(leadership)
            timeout = endpoint.timeout_s
            self._etcd_client = endpoint.client()
            self._store = EtcdStore(
                self._etcd_client, prefix=leadership.key_prefix, timeout_s=timeout
            )
        else:
            path = self.settings.store_path
            if path is None:
                path = default_store_path(self._config)
                self._warn(
                    f"the MCP registry is kept in the temp dir ({path.name}); set "
                    "routeiq.mcp.store_path to keep it somewhere durable"
                )
            store = SqliteStore(path)
            store.create()
            self._store = store
        try:
            with anyio.fail_after(self.settings.connect_timeout_s):
                stored = await self._store.load()
        except (StoreUnavailable, TimeoutError) as exc:
            self._warn(f"the MCP registry could not be read at startup: {describe(exc)}")
            stored = {}
        self._apply(stored, record=False)
        self.aggregator.build()

    async def close(self) -> None:
        client, self._etcd_client = self._etcd_client, None
        if client is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await client.close()

    def services(self, supervisor: Supervisor) -> list[Service]:
        """The serve phase's services; ``mcp-registry`` starts one session per server."""
        self._supervisor = supervisor
        return [
            Service("mcp-endpoint", self.aggregator.run),
            Service("mcp-registry", self._follow),
        ]

    # --- admin operations ---------------------------------------------------------------------

    def view(self) -> list[dict[str, Any]]:
        rows = []
        for name in sorted(self.entries):
            entry = self.entries[name]
            session = self.sessions.get(name)
            rows.append({
                **entry.spec.public_view(),
                "source": entry.source,
                "status": "up" if session is not None and session.up else "down",
                "tools": sorted(session.tools) if session is not None else [],
                "last_error": None if session is None else session.last_error,
            })  # fmt: skip
        return rows

    async def submit_put(self, spec: McpServerSpec) -> bool:
        """Register or replace ``spec``; True once this replica serves it (else pending)."""
        self._writable(spec.name)
        self.guard.check_url(spec.url)
        await self._submit(self._store_or_fail().submit_put(spec))
        return await self._wait_until(lambda: self._stored.get(spec.name) == spec)

    async def submit_delete(self, name: str) -> bool:
        self._writable(name)
        await self._submit(self._store_or_fail().submit_delete(name))
        return await self._wait_until(lambda: name not in self._stored)

    def _writable(self, name: str) -> None:
        if name in self._declared:
            raise RegistryConflict(
                f"MCP server {name!r} is declared in the config; change it there"
            )

    def _store_or_fail(self) -> RegistryStore:
        if self._store is None:
            raise StoreUnavailable("the MCP registry is not open")
        return self._store

    async def _submit(self, request: Any) -> None:
        with anyio.fail_after(self.settings.connect_timeout_s):
            await request
        self._poll_now.set()

    async def _wait_until(self, condition: Any) -> bool:
        with anyio.move_on_after(max(2.0, 8 * self.settings.poll_s)):
            while not condition():
                self._poll_now.set()
                await self._synced.wait()
            return True
        return False

    # --- the follower ---------------------------------------------------------------------

    async def _follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        for name, entry in sorted(self.entries.items()):
            if name not in self.sessions:
                await self._start_session(entry.spec)
        while True:
            try:
                await self._lead_once()
                stored = await self._store_or_fail().load()
            except StoreUnavailable:
                stored = None  # keep serving what we have; try again at the next poll
            if stored is not None:
                await self._reconcile(stored)
            synced, self._synced = self._synced, anyio.Event()
            synced.set()
            with anyio.move_on_after(self.settings.poll_s):
                await self._poll_now.wait()
            self._poll_now = anyio.Event()

    async def _lead_once(self) -> None:
        store = self._store
        leadership = self._leadership()
        if not isinstance(store, EtcdStore) or leadership is None or not leadership.is_leader():
            return
        elector, election = leadership.elector, leadership.election
        term = None if elector is None else elector.term
        if term is None or election is None:
            return

        async def fenced(key: str, value: str | None) -> None:
            if value is None:
                await election.fenced_delete(key, term=term)
            else:
                await election.fenced_put(key, value, term=term)

        try:
            await store.apply_requests(fenced)
        except (LeadershipLost, ElectionUnavailable):
            return  # the elector notices and steps down; the next leader applies the rest

    async def _reconcile(self, stored: dict[str, McpServerSpec]) -> None:
        before = {name: entry.spec for name, entry in self.entries.items()}
        self._apply(stored, record=True)
        for name, spec in before.items():
            if self.entries.get(name, None) is None or self.entries[name].spec != spec:
                session = self.sessions.pop(name, None)
                if session is not None:
                    session.stop()
        for name, entry in sorted(self.entries.items()):
            if name not in self.sessions:
                await self._start_session(entry.spec)
        self.aggregator.notify_changed()

    def _apply(self, stored: dict[str, McpServerSpec], *, record: bool) -> None:
        # Config-declared names win: the store cannot shadow them.
        stored = {n: s for n, s in stored.items() if n not in self._declared}
        entries: dict[str, Entry] = {n: Entry(s, "config") for n, s in self._declared.items()}
        entries.update({n: Entry(s, "registry") for n, s in stored.items()})
        if record:
            for name in sorted(set(entries) | set(self.entries)):
                old, new = self.entries.get(name), entries.get(name)
                if old == new:
                    continue
                trigger = (
                    "mcp_server_added"
                    if old is None
                    else "mcp_server_removed"
                    if new is None
                    else "mcp_server_updated"
                )
                url = (new or old).spec.url  # type: ignore[union-attr]
                self._events.append(
                    EventKind.CONFIG,
                    trigger=trigger,
                    component="mcp",
                    attributes={"server": name, "url": url},
                )
        self._stored = stored
        self.entries = entries

    async def _start_session(self, spec: McpServerSpec) -> None:
        supervisor = self._supervisor
        if supervisor is None:
            return
        session = UpstreamSession(
            spec,
            settings=self.settings,
            guard=self.guard,
            env=self._env,
            events=self._events,
            on_change=self.aggregator.notify_changed,
            clock=self._clock,
        )
        self.sessions[spec.name] = session
        generation = self._generation.get(spec.name, 0) + 1
        self._generation[spec.name] = generation
        # The supervisor keeps every name it ever ran: a re-registered server gets a new one.
        service = f"mcp:{spec.name}" if generation == 1 else f"mcp:{spec.name}:{generation}"
        await supervisor.start(Service(service, session.run, "transient"))

    def _warn(self, message: str) -> None:
        self._events.append(EventKind.WARNING, component="mcp", attributes={"message": message})


async def open_mcp(
    gateway: Gateway, env: Mapping[str, str]
) -> tuple[McpGateway, Callable[[], Any]]:
    """Build and open the MCP gateway of ``gateway``; returns it and its undo."""
    config = gateway.config
    if config is None:
        raise GatewayError("the MCP gateway needs the configured gateway")
    mcp = McpGateway(
        config,
        events=gateway.events,
        env=env,
        metrics=gateway.metrics,
        tracer_provider=gateway.tracer_provider,
        leadership=lambda: gateway.components.leadership,
        clock=gateway.clock,
    )
    unsubscribe: Callable[[], None] = lambda: None  # noqa: E731
    if gateway.metrics is not None:
        unsubscribe = gateway.events.subscribe(McpMetricsProjection(gateway.metrics))
    try:
        await mcp.open()
    except BaseException:
        unsubscribe()
        await mcp.close()
        raise

    async def close() -> None:
        unsubscribe()
        await mcp.close()

    return mcp, close
