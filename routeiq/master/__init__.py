"""The process group: a prefork master (``Arbiter``) and its workers (``routeiq serve --workers``).

See ``routeiq.master.arbiter`` for what the master guarantees and ``routeiq.master.worker`` for
a worker's side of the protocol between them.
"""

from __future__ import annotations

import os

from routeiq.errors import ConfigError
from routeiq.master.arbiter import Arbiter

__all__ = ["Arbiter", "parse_workers"]


def parse_workers(value: str) -> int:
    """``--workers`` / ``ROUTEIQ_WORKERS``: a positive count, or ``auto`` for the usable CPUs."""
    text = value.strip().lower()
    if text == "auto":
        return len(os.sched_getaffinity(0))
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError([("workers", f"must be a positive integer or 'auto', got {value!r}")])
    return count
