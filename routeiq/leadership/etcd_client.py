"""The one place that builds the gateway's etcd clients: TLS, auth and reconnect timing.

``EtcdEndpoint`` says where etcd is and how to talk to it (plain or TLS, with or without a
client certificate, with or without a user); ``EtcdEndpoint.client()`` builds an ``aetcd``
client for it. The election and config sync both use it, so they always agree.

Guarantees: the gRPC channel's reconnect backoff is bounded by ``reconnect_max_s`` (grpc's
default grows to two minutes, and after a 30 s outage it left the seat empty for seconds while
etcd was healthy again); an auth token etcd no longer accepts (it forgets tokens on restart,
and they expire) is replaced at the next call after ``reset_after(error)`` closes the client.
Not provided: several endpoints (aetcd speaks to one target: the first configured).

aetcd 1.0 only opens insecure channels, and a connect of its that fails half-way (a timeout
during authentication on a busy host) leaves the client broken for good; ``_client_class``
replaces its connect: TLS when configured, and a failed or cancelled connect is undone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routeiq.config.model import LeadershipSettings
from routeiq.errors import ConfigError
from routeiq.leadership.election import ElectionUnavailable

__all__ = ["EtcdEndpoint", "is_auth_error", "stray_cancellation_is_unavailable"]


@dataclass(frozen=True, slots=True)
class EtcdEndpoint:
    host: str = "127.0.0.1"
    port: int = 2379
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    user: str | None = None
    password: str | None = None
    timeout_s: float = 5.0
    reconnect_max_s: float = 1.0

    def __repr__(self) -> str:
        tls = "tls" if self.tls else "plain"
        user = f", user={self.user!r}" if self.user else ""
        return f"EtcdEndpoint({self.host}:{self.port}, {tls}{user})"

    @property
    def tls(self) -> bool:
        return self.ca_cert is not None or self.client_cert is not None

    @classmethod
    def from_settings(
        cls, settings: LeadershipSettings, *, timeout_s: float, reconnect_max_s: float
    ) -> EtcdEndpoint:
        endpoint = settings.etcd_endpoints[0] if settings.etcd_endpoints else ""
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                [("routeiq.leadership.etcd_endpoints[0]", f"expected host:port, got {endpoint!r}")]
            )
        password = settings.etcd_password
        return cls(
            host=host.strip("[]"),
            port=int(port),
            ca_cert=settings.etcd_ca_cert,
            client_cert=settings.etcd_client_cert,
            client_key=settings.etcd_client_key,
            user=settings.etcd_user,
            password=None if password is None else password.get_secret_value(),
            timeout_s=timeout_s,
            reconnect_max_s=reconnect_max_s,
        )

    def channel_options(self) -> dict[str, Any]:
        """gRPC channel options: reconnect attempts at most ``reconnect_max_s`` apart."""
        most = max(100, int(self.reconnect_max_s * 1000))
        # Not grpc.min_reconnect_backoff_ms: grpc also takes it as the minimum time a connection
        # attempt may last (20 s by default); lowered, a TLS handshake on a busy host times out.
        return {
            "grpc.initial_reconnect_backoff_ms": min(100, most),
            "grpc.max_reconnect_backoff_ms": most,
        }

    def credentials(self) -> Any:
        """``grpc.ChannelCredentials`` for TLS, read from the configured PEM files."""
        import grpc  # type: ignore[import-untyped]

        problems: list[tuple[str, str]] = []
        pem: dict[str, bytes | None] = {}
        for name, path in (
            ("etcd_ca_cert", self.ca_cert),
            ("etcd_client_cert", self.client_cert),
            ("etcd_client_key", self.client_key),
        ):
            if path is None:
                pem[name] = None
                continue
            try:
                pem[name] = path.read_bytes()
            except OSError as exc:
                why = f"cannot read {path}: {exc.strerror}"
                problems.append((f"routeiq.leadership.{name}", why))
        if problems:
            raise ConfigError(problems)
        return grpc.ssl_channel_credentials(
            root_certificates=pem["etcd_ca_cert"],
            private_key=pem["etcd_client_key"],
            certificate_chain=pem["etcd_client_cert"],
        )

    def client(self) -> Any:
        """A new, not yet connected ``aetcd.Client`` for this endpoint."""
        credentials = self.credentials() if self.tls else None
        return _client_class()(
            host=self.host,
            port=self.port,
            username=self.user,
            password=self.password,
            timeout=self.timeout_s,
            options=self.channel_options(),
            credentials=credentials,
        )


def is_auth_error(exc: BaseException) -> bool:
    """Whether etcd refused the client's credentials or token (a new token may fix it)."""
    import aetcd.exceptions

    return isinstance(exc, aetcd.exceptions.UnauthenticatedError) or (
        isinstance(exc, aetcd.exceptions.ClientError) and "auth token" in str(exc)
    )


@contextmanager
def stray_cancellation_is_unavailable() -> Iterator[None]:
    """grpc.aio raises ``asyncio.CancelledError`` from a call it cancelled itself (its channel
    was closed under it, say) although nobody cancelled the awaiting task. That means "etcd did
    not answer", not a cancellation: propagated, it would end the caller's task quietly."""
    try:
        yield
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise ElectionUnavailable("etcd: the grpc client cancelled the call") from exc


def _client_class() -> type[Any]:
    # aetcd (and grpc) are imported on first use: importing routeiq must not pull them in.
    import aetcd
    import anyio
    from aetcd import rpc, watcher

    class GatewayEtcdClient(aetcd.Client):  # type: ignore[misc]
        """``aetcd.Client`` with a TLS channel when ``credentials`` are given, and a connect
        that leaves the client usable when it fails or is cancelled half-way (aetcd's own
        keeps the half-made state: every later call then fails)."""

        def __init__(self, *args: Any, credentials: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._credentials = credentials
            self._connecting: asyncio.Event | None = None

        async def connect(self) -> None:
            me: Any = self  # aetcd's attributes are untyped
            if me._connected.is_set():
                return
            if self._connecting is not None:  # another task connects: wait for its outcome
                await self._connecting.wait()
                if not me._connected.is_set():
                    raise aetcd.exceptions.ConnectionFailedError("connecting to etcd failed")
                return
            self._connecting = asyncio.Event()
            try:
                await self._open_channel(me)
            except BaseException:
                channel = me.channel
                me._init_channel_attrs()
                if channel is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                        await channel.close()
                raise
            finally:
                self._connecting.set()
                self._connecting = None

        async def _open_channel(self, me: Any) -> None:
            import grpc.aio  # type: ignore[import-untyped]

            target = f"{me._host}:{me._port}"
            options = list(me._options.items())
            if self._credentials is None:
                me.channel = grpc.aio.insecure_channel(target, options=options)
            else:
                me.channel = grpc.aio.secure_channel(target, self._credentials, options=options)
            if me._username is not None and me._password is not None:
                me.auth_stub = rpc.AuthStub(me.channel)
                request = rpc.AuthenticateRequest(name=me._username, password=me._password)
                try:
                    reply = await me.auth_stub.Authenticate(request, timeout=me._timeout)
                except rpc.AioRpcError as exc:
                    aetcd.exceptions._handle_exception(exc)
                me.metadata = (("token", reply.token),)
            me.kvstub = rpc.KVStub(me.channel)
            me.clusterstub = rpc.ClusterStub(me.channel)
            me.leasestub = rpc.LeaseStub(me.channel)
            me.maintenancestub = rpc.MaintenanceStub(me.channel)
            me._watcher = watcher.Watcher(
                rpc.WatchStub(me.channel), timeout=me._timeout, metadata=me.metadata
            )
            me._connected.set()

    return GatewayEtcdClient
