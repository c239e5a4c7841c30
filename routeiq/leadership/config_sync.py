"""Config sync: how a changed config file (or ``POST /_admin/reload``) reaches every worker.

- ``local`` backend: every worker watches the file itself and hot-swaps (``FileWatcher``).
- ``etcd`` backend: only the leader reads and fully validates the file, then publishes it
  through etcd; every worker follows (``EtcdConfigSync``, in ``routeiq.leadership.etcd_sync``,
  which documents the keys and what they guarantee).
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from routeiq.config.reload import Reloader, ReloadResult, digest_of
from routeiq.config.source import read_config_bytes, read_config_text
from routeiq.errors import ConfigError
from routeiq.leadership.etcd_sync import EtcdConfigSync, Published
from routeiq.lifecycle.clock import Clock

__all__ = ["EtcdConfigSync", "FileWatcher", "Published"]


def _read(path: Path) -> str | None:
    """The config file's text, or ``None`` when it cannot be read as a config (see
    ``routeiq.config.source``: regular files only, bounded, UTF-8). Never blocks on a FIFO."""
    try:
        return read_config_text(path)
    except ConfigError:
        return None


class FileWatcher:
    """Every worker: re-read the config file when it changes and hot-swap (local backend).

    Each poll is one ``stat`` on the event loop; only when the file's status changed (or is too
    recent to trust, as git treats "racy" entries) is the file read, decoded, parsed and
    validated, in a worker thread. Every outcome is ``applied``, ``unchanged`` or ``rejected``
    with reasons: an unreadable or invalid file is one ``config`` rejection event, the old
    config keeps serving, and the same content (or, for an unreadable file, the same error and
    file status) is not retried until it changes or a reload is forced.
    """

    # A file modified this recently may change again within the same timestamp tick.
    RACY_S = 1.0

    def __init__(self, reloader: Reloader, path: Path, *, poll_s: float, clock: Clock) -> None:
        self._reloader = reloader
        self._path = path
        self._poll_s = poll_s
        self._clock = clock
        self._seen: str | None = None
        self._status: str | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # What is running was loaded from this file: its digest is the content already seen.
        self._seen = self._reloader.running_digest()
        task_status.started()
        while True:
            await self._clock.sleep(self._poll_s)
            await self.check(force=False)

    async def check(self, *, force: bool) -> ReloadResult | None:
        """Reload if the file changed (always, with ``force``); ``None`` if nothing changed."""
        status, racy = _status(self._path, self.RACY_S)
        if status == self._status and not racy and not force:
            return None
        self._status = status
        key, data, error = await self._snapshot(status)
        if key == self._seen and not force:
            return None
        self._seen = key
        if data is None:
            return self._reloader.reject(digest_of(key), error or "unreadable", origin="file")
        return await self._reloader.apply(data, revision=None, origin="file")

    async def _snapshot(self, status: str) -> tuple[str, bytes | None, ConfigError | None]:
        """``(change key, content, read error)``: the key is the content's digest, or the read
        error with the file's status, so a fixed or replaced file is noticed."""
        try:
            data = await anyio.to_thread.run_sync(read_config_bytes, self._path)
        except ConfigError as exc:
            return f"{exc.render()}|{status}", None, exc
        return digest_of(data), data, None


def _status(path: Path, racy_s: float) -> tuple[str, bool]:
    """The file's status as a string, and whether it was modified too recently to trust."""
    try:
        info = path.stat()
    except OSError as exc:
        return f"stat failed: {exc.errno}", False
    status = f"{info.st_mode}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"
    racy = time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) < racy_s * 1e9
    return status, racy
