"""Leader election: one worker (per host with ``local``, per cluster with ``etcd``) leads.

``LeaderElector`` runs the campaign loop and the leader-only work over an ``Election``
backend: ``LocalElection`` (``flock``, the embedded default) or ``EtcdElection`` (lease, key
and fencing token in etcd; aetcd and grpc are imported only when one is used).
"""

from routeiq.leadership.election import Election, ElectionUnavailable, LeaderTerm, LeaderTimings
from routeiq.leadership.elector import ElectorStatistics, LeaderElector, LeaderWork, Recorder
from routeiq.leadership.etcd import EtcdElection
from routeiq.leadership.local import LocalElection

__all__ = [
    "Election",
    "ElectionUnavailable",
    "ElectorStatistics",
    "EtcdElection",
    "LeaderElector",
    "LeaderTerm",
    "LeaderTimings",
    "LeaderWork",
    "LocalElection",
    "Recorder",
]
