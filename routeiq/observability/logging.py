"""Log lines as a projection of the event log, and the gateway's one log handler.

Logging is process-wide in Python, so the handler is installed once per process (marked, so a
second app instance in the same process does not print every line twice) and removed when the
last instance that installed it unwinds.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from routeiq.lifecycle.events import Event, EventKind

__all__ = ["EventLogger", "install_handler"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _RouteIQHandler(logging.StreamHandler):  # type: ignore[type-arg]
    users = 0


def install_handler(level: str) -> Callable[[], None]:
    """Route ``routeiq`` and litellm logs to stderr at ``level``; returns the undo."""
    logger = logging.getLogger("routeiq")
    handler = next((h for h in logger.handlers if isinstance(h, _RouteIQHandler)), None)
    if handler is None:
        handler = _RouteIQHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    handler.users += 1
    logger.setLevel(_LEVELS[level])
    litellm_logger = logging.getLogger("LiteLLM")
    if handler not in litellm_logger.handlers:
        litellm_logger.addHandler(handler)
        litellm_logger.propagate = False
    installed = handler

    def remove() -> None:
        installed.users -= 1
        if installed.users <= 0:
            logger.removeHandler(installed)
            litellm_logger.removeHandler(installed)
            installed.flush()

    return remove


class EventLogger:
    """Writes one log line per event (secrets were scrubbed when the event was appended)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("routeiq.lifecycle")

    def __call__(self, event: Event) -> None:
        level = logging.INFO if event.ok else logging.ERROR
        if event.kind == EventKind.WARNING:
            level = logging.WARNING
        elif (
            event.kind in (EventKind.COMPONENT, EventKind.TEARDOWN, EventKind.SERVICE) and event.ok
        ):
            level = logging.DEBUG if event.kind != EventKind.SERVICE else logging.INFO
        if not self._log.isEnabledFor(level):
            return
        parts = [f"[{event.worker_id}] #{event.seq} {event.kind}"]
        if event.trigger:
            parts.append(event.trigger)
        if event.from_state or event.to_state:
            parts.append(f"{event.from_state or ''}->{event.to_state or ''}")
        if event.component:
            parts.append(event.component)
        if event.duration_s is not None:
            parts.append(f"{event.duration_s * 1000:.1f}ms")
        if event.error:
            parts.append(f"error={event.error}")
        parts += [f"{k}={v}" for k, v in event.attributes.items()]
        self._log.log(level, " ".join(parts))
