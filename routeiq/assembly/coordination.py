"""The serve phase's cluster services: leadership and config sync, under the supervisor.

Started in this order, each as a supervised ``permanent`` service: the config follower (so the
leader's publisher can read what is published), then the elector. On drain the supervisor
cancels both; the elector resigns on cancellation, so a follower takes over at once.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from routeiq.assembly.reload import RouterReloader
from routeiq.leadership.config_sync import EtcdConfigSync, FileWatcher
from routeiq.leadership.election import LeaderTerm
from routeiq.leadership.elector import LeaderWork
from routeiq.leadership.service import LeadershipService, etcd_endpoint
from routeiq.lifecycle.supervisor import Service

if TYPE_CHECKING:
    from routeiq.assembly.gateway import Gateway

__all__ = ["CONFIG_POLL_S", "start_coordination"]

CONFIG_POLL_S = 0.25


async def start_coordination(
    gateway: Gateway, litellm: ModuleType, env: dict[str, str]
) -> list[tuple[str, Service]]:
    """The services to start, in order; also sets them in ``gateway.components``."""
    config = gateway.config
    if config is None:
        raise RuntimeError("coordination needs the configured gateway")
    settings = config.routeiq.leadership
    reloader = RouterReloader(gateway, litellm, env)
    gateway.components.reloader = reloader
    path = reloader.source_path()
    services: list[tuple[str, Service]] = []
    work: list[LeaderWork] = []
    leadership: LeadershipService

    if settings.backend == "etcd":

        async def fenced_put(key: str, value: str, term: LeaderTerm) -> None:
            election = leadership.election
            if election is None:
                raise RuntimeError("no election yet")
            await election.fenced_put(key, value, term=term)  # type: ignore[attr-defined]

        sync = EtcdConfigSync(
            reloader,
            path,
            prefix=settings.key_prefix.rstrip("/"),
            endpoint=etcd_endpoint(settings),
            fenced_put=fenced_put,
            poll_s=CONFIG_POLL_S,
            clock=gateway.clock,
        )
        gateway.components.config_sync = sync
        services.append(("config-sync", Service("config-sync", sync.follow)))
        work.append(sync.publish_as_leader)
    elif path is not None:
        watcher = FileWatcher(reloader, path, poll_s=CONFIG_POLL_S, clock=gateway.clock)
        gateway.components.config_sync = watcher
        services.append(("config-sync", Service("config-sync", watcher.run)))

    leadership = LeadershipService(
        config,
        candidate_id=gateway.worker_id,
        events=gateway.events,
        clock=gateway.clock,
        work=work,
    )
    gateway.components.leadership = leadership
    services.append(("leadership", Service("leadership", leadership.run)))
    return services
