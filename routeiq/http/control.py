"""Who may read the control plane (``/_lifecycle``, ``/_lifecycle/startup``, ``/metrics``),
and what the others see.

``read_access`` decides: the read key (``routeiq.read_key``, ``ROUTEIQ_READ_KEY``) or the admin
key, presented as a Bearer token, grants the full view; no token gets the redacted view (so
Prometheus and probes keep working with no key configured); a token that matches neither key is
refused (401), since it is a misconfigured client rather than an anonymous one.

The redacted view keeps what an operator needs to see the gateway's health from outside: the
lifecycle state pair, readiness and liveness, the event kinds, triggers, states, components and
durations, revisions and leadership terms. It leaves out what identifies or describes the
host and its problems in detail: pids, worker ids (host name and pid by default), the config
path, the leader's id and every error text (replaced by ``"[redacted]"``: only that there is
one). In ``/metrics`` the ``pid`` label of multiprocess gauges becomes a pseudonym, stable for
the life of the metrics directory, so series stay apart without naming processes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from routeiq.http.auth import bearer_token, key_matches

if TYPE_CHECKING:
    from routeiq.config.model import GatewayConfig

__all__ = [
    "REDACTED",
    "Access",
    "read_access",
    "redact_event",
    "redact_leadership",
    "redact_lifecycle",
    "redact_metrics",
    "redact_startup",
]

REDACTED = "[redacted]"

Access = Literal["full", "redacted", "refused"]

# Event attributes that say nothing about the host or about an error's details.
_SAFE_ATTRIBUTES = frozenset(
    {
        "revision",
        "digest",
        "models",
        "fencing_token",
        "phase",
        "process_uptime_s",
        "restart",
        "attempt",
        "result",
    }
)
_SAFE_ORIGINS = frozenset({"file", "etcd", "admin", "startup", "embedded"})
_PID_LABEL = re.compile(rb'\bpid="(\d+)"')


def read_access(headers: Mapping[str, str], config: GatewayConfig | None) -> Access:
    """The view a request gets, from its ``Authorization`` header and the configured keys."""
    token = bearer_token(headers)
    if token is None:
        return "redacted"
    routeiq = None if config is None else config.routeiq
    keys = [] if routeiq is None else [routeiq.read_key, routeiq.admin_key]
    for key in keys:
        if key is not None and key_matches(token, key.get_secret_value()):
            return "full"
    return "refused"


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event (``Event.to_dict()``) without pid, worker id, error text or unsafe attributes."""
    out = {k: v for k, v in event.items() if k not in ("pid", "worker_id")}
    if out.get("error") is not None:
        out["error"] = REDACTED
    attributes = event.get("attributes") or {}
    safe = {k: v for k, v in attributes.items() if k in _SAFE_ATTRIBUTES}
    origin = attributes.get("origin")
    if origin is not None:
        safe["origin"] = origin if origin in _SAFE_ORIGINS else REDACTED
    out["attributes"] = safe
    return out


def redact_lifecycle(
    status: Any, leadership: Mapping[str, Any], events: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ``/_lifecycle`` body for a reader without the read key (``status`` is the
    gateway's ``status()``, ``events`` already paged)."""
    return {
        "state": status.state,
        "ready": status.ready,
        "live": status.live,
        "failed_phase": status.failed_phase,
        "error": None if status.error is None else REDACTED,
        "leadership": redact_leadership(leadership),
        "events": [redact_event(e) for e in events],
        "redacted": True,
    }


def redact_leadership(view: Mapping[str, Any]) -> dict[str, Any]:
    """The leadership view without worker ids: whether a leader is known, not who it is."""
    out = {k: v for k, v in view.items() if k not in ("candidate_id", "leader_id")}
    out["has_leader"] = view.get("leader_id") is not None
    return out


def redact_startup(timeline: Mapping[str, Any]) -> dict[str, Any]:
    """The startup timeline (``StartupTimeline.to_dict()``) without error texts."""

    def step(item: Mapping[str, Any]) -> dict[str, Any]:
        return {**item, "error": None if item.get("error") is None else REDACTED}

    return {
        **timeline,
        "phases": [step(s) for s in timeline.get("phases", ())],
        "components": [step(s) for s in timeline.get("components", ())],
    }


def redact_metrics(body: bytes, multiprocess_dir: Path | None) -> bytes:
    """The exposition with each ``pid`` label value replaced by a pseudonym (keyed by the
    metrics directory's identity, which every worker of the group shares)."""
    if multiprocess_dir is None or b'pid="' not in body:
        return body
    try:
        info = os.stat(multiprocess_dir)
    except OSError:
        key = b"routeiq"
    else:
        key = f"{info.st_dev}:{info.st_ino}:{info.st_ctime_ns}".encode()

    def pseudonym(match: re.Match[bytes]) -> bytes:
        digest = hmac.new(key, match.group(1), hashlib.sha256).hexdigest()[:10]
        return b'pid="w-' + digest.encode() + b'"'

    return _PID_LABEL.sub(pseudonym, body)
