"""Leadership as a gateway service: the configured election, its events, metrics and view.

``LeadershipService.run`` is supervised like any other background service. It opens the
election backend from config (``local``: a lock file shared by the workers of one host;
``etcd``: a lease on ``<key_prefix>/leader``), runs a ``LeaderElector`` and reports every
leadership change as a ``leadership`` event (the metrics are a projection of those events).
Cancelling it (on drain) makes the elector resign, so a follower takes over without waiting
for the lease to expire.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from routeiq.config.model import GatewayConfig, LeadershipSettings
from routeiq.leadership.election import Election, LeaderTimings
from routeiq.leadership.elector import LeaderElector, LeaderWork
from routeiq.leadership.etcd import EtcdElection
from routeiq.leadership.etcd_client import EtcdEndpoint
from routeiq.leadership.local import LocalElection
from routeiq.lifecycle.clock import Clock
from routeiq.lifecycle.events import EventKind, EventLog

__all__ = ["LeadershipService", "default_lock_path", "etcd_endpoint"]


def default_lock_path(config: GatewayConfig) -> Path:
    """One lock per config source and host: the workers of one hypercorn master share it."""
    digest = hashlib.sha256(config.source.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"routeiq-leader-{digest}.lock"


def etcd_endpoint(settings: LeadershipSettings) -> EtcdEndpoint:
    """Where and how every etcd client of this gateway connects (election and config sync)."""
    return EtcdEndpoint.from_settings(
        settings,
        timeout_s=max(settings.retry_period_s, settings.renew_deadline_s / 2),
        reconnect_max_s=settings.retry_period_s / 2,
    )


class LeadershipService:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        candidate_id: str,
        events: EventLog,
        clock: Clock,
        work: Sequence[LeaderWork] = (),
    ) -> None:
        self._settings = config.routeiq.leadership
        self._lock_path = self._settings.lock_path or default_lock_path(config)
        self._candidate_id = candidate_id
        self._events = events
        self._clock = clock
        self._work = list(work)
        self._timings = LeaderTimings(
            lease_duration=self._settings.lease_ttl_s,
            renew_deadline=self._settings.renew_deadline_s,
            retry_period=self._settings.retry_period_s,
        )
        self.election: Election | None = None
        self.elector: LeaderElector | None = None

    @property
    def backend(self) -> str:
        return self._settings.backend

    @property
    def key_prefix(self) -> str:
        return self._settings.key_prefix.rstrip("/")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self._open_election() as election:
            elector = LeaderElector(election, self._work, record=self._record, clock=self._clock)
            self.election, self.elector = election, elector
            try:
                await elector.run(task_status=task_status)
            finally:
                self.elector = None

    @asynccontextmanager
    async def _open_election(self) -> AsyncIterator[Election]:
        if self._settings.backend == "etcd":
            async with EtcdElection(
                self._candidate_id,
                endpoint=etcd_endpoint(self._settings),
                key=f"{self.key_prefix}/leader",
                timings=self._timings,
                clock=self._clock,
            ) as etcd:
                yield etcd
        else:
            async with LocalElection(
                self._lock_path,
                self._candidate_id,
                timings=self._timings,
                clock=self._clock,
            ) as local:
                yield local

    def _record(self, kind: str, attributes: Mapping[str, object]) -> None:
        allowed = (str, int, float, bool, type(None))
        self._events.append(
            EventKind.LEADERSHIP,
            trigger=str(attributes.get("trigger")),
            from_state=str(attributes.get("from")),
            to_state=str(attributes.get("to")),
            attributes={
                k: v
                for k, v in attributes.items()
                if k not in ("trigger", "from", "to") and isinstance(v, allowed)
            },
        )

    def view(self) -> dict[str, Any]:
        elector = self.elector
        if elector is None:
            return {
                "backend": self.backend,
                "state": "not-started",
                "leader_id": None,
                "fencing_token": None,
            }
        stats = elector.statistics()
        last_renew = stats.last_renew
        return {
            "backend": self.backend,
            "state": stats.state,
            "candidate_id": stats.candidate_id,
            "leader_id": stats.leader_id,
            "fencing_token": stats.fencing_token,
            "churn": stats.churn,
            "since_renew_s": (
                round(self._clock.monotonic() - last_renew, 3)
                if last_renew is not None and stats.state == "leader"
                else None
            ),
            "healthy": elector.healthy(),
        }

    async def resign(self) -> None:
        """Give up leadership now (on drain), so a follower takes over without waiting."""
        elector = self.elector
        if elector is not None:
            await elector.resign()

    def healthy(self) -> bool:
        elector = self.elector
        return True if elector is None else elector.healthy()

    def is_leader(self) -> bool:
        elector = self.elector
        return elector is not None and elector.state == "leader"
