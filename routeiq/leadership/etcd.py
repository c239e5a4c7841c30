"""Leadership across hosts on etcd (``aetcd``, asyncio), with fencing.

The seat is one key. A campaign grants a lease and puts the candidate id under the key in a
transaction that succeeds only while the key does not exist (``create_revision == 0``); the
key's create revision is then the term's **fencing token**: it is unique to the term and grows
with every new term. ``fenced_put``/``fenced_delete`` compare it in the same transaction as the
write, so a deposed leader's writes are refused even if it has not noticed yet.

Guarantees: renewals refresh the lease and check that the key is still this term's; the elector
steps down before the lease can expire (see ``LeaderTimings``), and a stepped-down leader
revokes its lease as soon as etcd answers again. Not guaranteed: writes made outside
``fenced_*`` are not fenced, and a process paused longer than the lease can still act before it
notices — which is exactly what the fence is for.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import anyio

from routeiq.errors import ConfigError, LeadershipLost
from routeiq.leadership.election import ElectionUnavailable, LeaderTerm, LeaderTimings
from routeiq.leadership.etcd_client import (
    EtcdEndpoint,
    is_auth_error,
    stray_cancellation_is_unavailable,
)
from routeiq.lifecycle.clock import Clock, SystemClock

__all__ = ["EtcdElection"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _aetcd() -> Any:
    # Imported on first use: aetcd pulls in grpc, which importing routeiq must not do.
    import aetcd
    import aetcd.exceptions

    return aetcd


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What "etcd did not answer" looks like through aetcd and grpc; anything else is a bug."""
    return (_aetcd().exceptions.ClientError, TimeoutError, OSError)


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    errors = _aetcd().exceptions
    return (
        errors.ConnectionFailedError,
        errors.ConnectionTimeoutError,
        TimeoutError,
        OSError,
        ElectionUnavailable,
    )


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


class EtcdElection:
    """``Election`` backend on an etcd lease and key; also the fenced writer for leader work."""

    def __init__(
        self,
        candidate_id: str,
        *,
        host: str = "127.0.0.1",
        port: int = 2379,
        endpoint: EtcdEndpoint | None = None,
        key: str = "/routeiq/leader",
        timings: LeaderTimings | None = None,
        request_timeout: float | None = None,
        client_factory: Callable[[], Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        timings = timings or LeaderTimings()
        problems: list[tuple[str, str]] = []
        if not candidate_id:
            problems.append(("candidate_id", "must be a non-empty string"))
        if not key:
            problems.append(("key", "must be a non-empty etcd key"))
        if timings.lease_duration != math.floor(timings.lease_duration):
            problems.append((
                "lease_duration",
                f"etcd leases last whole seconds; use {math.ceil(timings.lease_duration)} "
                f"instead of {timings.lease_duration}",
            ))  # fmt: skip
        if request_timeout is not None and not 0 < request_timeout <= timings.renew_deadline:
            problems.append((
                "request_timeout",
                f"must be positive and at most renew_deadline ({timings.renew_deadline}), "
                f"got {request_timeout}",
            ))  # fmt: skip
        if problems:
            raise ConfigError(problems, source="etcd leadership")
        self._candidate_id = candidate_id
        self._key = key.encode()
        self._timings = timings
        self._ttl = int(timings.lease_duration)
        self._timeout = request_timeout or max(timings.retry_period, timings.renew_deadline / 2)
        if endpoint is None:
            endpoint = EtcdEndpoint(host, port)
        # Together: the first campaign after an outage comes within a retry period of etcd's
        # return, not after grpc's reconnect backoff (which grows to two minutes).
        self._probe_s = timings.retry_period / 4
        endpoint = replace(
            endpoint, timeout_s=self._timeout, reconnect_max_s=timings.retry_period / 2
        )
        self._client_factory = client_factory or endpoint.client
        self._clock: Clock = clock or SystemClock()
        self._client: Any = None
        self._term: LeaderTerm | None = None
        self._lease_id: int | None = None
        self._stale_leases: set[int] = set()
        self._leader_id: str | None = None

    @property
    def candidate_id(self) -> str:
        return self._candidate_id

    @property
    def timings(self) -> LeaderTimings:
        return self._timings

    @property
    def leader_id(self) -> str | None:
        return self._leader_id

    @property
    def key(self) -> bytes:
        return self._key

    @property
    def term(self) -> LeaderTerm | None:
        """The term this election believes it holds (the elector decides when to give it up)."""
        return self._term

    async def __aenter__(self) -> EtcdElection:
        # Not connected yet: aetcd connects on the first call, and with a user set that means
        # a request to etcd, which may be down now (then the first campaign fails, as it should).
        self._client = self._client_factory()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            self._drop_term()
            await self._revoke_stale()
            with anyio.move_on_after(self._timeout):
                await self._client.close()
            self._client = None

    # --- Election -----------------------------------------------------------------------------

    async def campaign(self) -> LeaderTerm | None:
        if self._term is not None:
            return self._term
        client = self._connected()
        await self._revoke_stale()
        sent = self._clock.monotonic()
        lease_id: int | None = None
        won = False
        responses: list[Any] = []
        txn = client.transactions
        try:
            lease = await self._call(client.lease(self._ttl))
            lease_id = int(lease.id)
            ok, responses = await self._call(
                client.transaction(
                    compare=[txn.create(self._key) == 0],
                    success=[txn.put(self._key, self._candidate_id.encode(), lease=lease_id)],
                    failure=[txn.get(self._key)],
                )
            )
            won = bool(ok)
        finally:
            # Lost, failed or cancelled half-way: the lease may hold the key, so it must go.
            if lease_id is not None and not won:
                self._stale_leases.add(lease_id)
        if not won:
            self._leader_id = self._holder(responses)
            await self._revoke_stale()
            return None
        token = int(responses[0].response_put.header.revision)
        self._lease_id = lease_id
        self._term = LeaderTerm(self._candidate_id, token, sent)
        self._leader_id = self._candidate_id
        return self._term

    async def renew(self, term: LeaderTerm) -> None:
        if term != self._term or self._lease_id is None:
            raise LeadershipLost(f"term {term.fencing_token} is no longer held by this candidate")
        client = self._connected()
        reply = await self._call(client.refresh_lease(self._lease_id))
        if reply is None:
            raise ElectionUnavailable("etcd closed the lease keep-alive stream without a reply")
        if reply.TTL <= 0:
            self._drop_term()
            raise LeadershipLost(f"lease of term {term.fencing_token} expired or was revoked")
        kv = await self._call(client.get(self._key))
        if kv is None or kv.create_revision != term.fencing_token:
            self._drop_term()
            raise LeadershipLost(f"leader key {self._key!r} was deleted or replaced")

    async def resign(self, term: LeaderTerm) -> None:
        if term != self._term:
            return
        self._drop_term()
        self._leader_id = None
        await self._revoke_stale()

    async def wait_vacancy(self, period: float) -> bool:
        with anyio.move_on_after(period):
            while True:
                try:
                    await self._revoke_stale()
                    client = self._connected()
                    kv = await self._call(client.get(self._key))
                    if kv is None:
                        self._leader_id = None
                        return True
                    self._leader_id = kv.value.decode(errors="replace")
                    await self._watch_until_deleted(client, kv.header.revision + 1)
                    self._leader_id = None
                    return True
                except ElectionUnavailable as exc:
                    log.debug("etcd unavailable while following: %s", exc)
                # Unreachable: ask again a few times per period (a failed call on a broken
                # channel returns at once, so never in a hot loop), so that the empty seat is
                # seen, and campaigned for, soon after etcd is back.
                await anyio.sleep(self._probe_s)
        return False

    # --- fenced writes ------------------------------------------------------------------------

    async def fenced_put(
        self, key: str | bytes, value: str | bytes, *, term: LeaderTerm | None = None
    ) -> None:
        """Put ``key`` only if ``term`` (default: the current one) is still the leader's."""
        client = self._connected()
        await self._fenced(term, client.transactions.put(_to_bytes(key), _to_bytes(value)))

    async def fenced_delete(self, key: str | bytes, *, term: LeaderTerm | None = None) -> None:
        """Delete ``key`` only if ``term`` (default: the current one) is still the leader's."""
        client = self._connected()
        await self._fenced(term, client.transactions.delete(_to_bytes(key)))

    async def _fenced(self, term: LeaderTerm | None, op: object) -> None:
        term = term or self._term
        if term is None:
            raise LeadershipLost("not the leader: no term to fence this write with")
        client = self._connected()
        ok, _ = await self._call(
            client.transaction(
                compare=[client.transactions.create(self._key) == term.fencing_token],
                success=[op],
                failure=[],
            )
        )
        if not ok:
            if term == self._term:
                self._drop_term()
            raise LeadershipLost(f"fencing token {term.fencing_token} is no longer current")

    # --- internals ----------------------------------------------------------------------------

    def _connected(self) -> Any:
        if self._client is None:
            raise RuntimeError("EtcdElection is used outside its 'async with' block")
        return self._client

    async def _call(self, request: Awaitable[T]) -> T:
        try:
            with stray_cancellation_is_unavailable(), anyio.fail_after(self._timeout):
                return await request
        except _transport_errors() as exc:
            if is_auth_error(exc):
                await self._reconnect()
            raise ElectionUnavailable(f"etcd: {exc}") from exc

    async def _reconnect(self) -> None:
        """Drop the channel (and the auth token etcd refused); the next call connects anew."""
        client = self._client
        if client is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                await client.close()

    def _drop_term(self) -> None:
        # The lease stays with etcd until revoked or expired; revoke it at the next chance.
        if self._lease_id is not None:
            self._stale_leases.add(self._lease_id)
        self._term, self._lease_id = None, None

    async def _revoke_stale(self) -> None:
        client = self._connected()
        for lease_id in sorted(self._stale_leases):
            try:
                with stray_cancellation_is_unavailable(), anyio.fail_after(self._timeout):
                    await client.revoke_lease(lease_id)
            except _unreachable_errors() as exc:
                log.debug("could not revoke lease %x yet: %s", lease_id, exc)
                return
            except _aetcd().exceptions.ClientError:
                pass  # already expired: etcd answers "lease not found"
            self._stale_leases.discard(lease_id)

    async def _watch_until_deleted(self, client: Any, start_revision: int) -> None:
        watch = await self._call(client.watch(self._key, start_revision=start_revision))
        try:
            with stray_cancellation_is_unavailable():
                async for event in watch:
                    if event.kind == "DELETE":
                        return
                    self._leader_id = event.kv.value.decode(errors="replace")
        except _transport_errors() as exc:
            raise ElectionUnavailable(f"etcd watch: {exc}") from exc
        finally:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(self._timeout),
                contextlib.suppress(ElectionUnavailable),
                stray_cancellation_is_unavailable(),
            ):
                await watch.cancel()
        raise ElectionUnavailable("etcd watch ended")

    @staticmethod
    def _holder(responses: list[Any]) -> str | None:
        for found in responses:
            for value, _kv in found:
                return bytes(value).decode(errors="replace")
        return None
