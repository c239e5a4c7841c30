"""The master's signals: recorded by a handler, woken up through a pipe, handled in its loop.

Python runs a signal handler between bytecodes of the main thread; ``signal.set_wakeup_fd``
also writes the signal number to a pipe, so a master blocked in ``select`` wakes up at once.
The handler only appends to a list: everything else happens in the loop, never re-entrantly.
A forked worker calls ``reset_in_child`` first: default dispositions, no wake-up fd, and
SIGINT/SIGHUP ignored (a terminal sends them to the whole process group; the master relays).
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

__all__ = ["HANDLED", "SignalPipe"]

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


class SignalPipe:
    def __init__(self) -> None:
        self._pending: list[int] = []
        self._read = self._write = -1
        self._previous_wakeup = -1
        self._previous: dict[int, Any] = {}

    def fileno(self) -> int:
        return self._read

    def install(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous_wakeup = signal.set_wakeup_fd(self._write)
        self._previous = {sig: signal.signal(sig, self._handle) for sig in HANDLED}

    def _handle(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)

    def take(self) -> list[int]:
        """The signals received since the last call, in order; empties the wake-up pipe."""
        with contextlib.suppress(BlockingIOError):
            while self._read >= 0 and os.read(self._read, 4096):
                pass
        pending, self._pending = self._pending, []
        return pending

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        signal.set_wakeup_fd(self._previous_wakeup)
        self._close()

    def reset_in_child(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._close()

    def _close(self) -> None:
        for fd in (self._read, self._write):
            if fd >= 0:
                os.close(fd)
        self._read = self._write = -1
