"""Config sync: how a changed config file (or ``POST /_admin/reload``) reaches every worker.

- ``local`` backend: every worker watches the file itself and hot-swaps (``FileWatcher``).
- ``etcd`` backend: only the leader reads and fully validates the file, then publishes it to
  ``<prefix>/config`` in a transaction that compares its fencing token, so a deposed leader's
  write fails; every worker polls that key and hot-swaps (``EtcdConfigSync``). A config the
  leader rejects is published to ``<prefix>/config-rejected`` so that every worker records the
  rejection too: each put is one rejection, recorded once by each worker that was following
  then (rejections from before a worker started are not its own). Bad text is rejected once
  per attempt: again after another config was published, or when a reload is requested.
  ``<prefix>/reload-request`` lets any worker ask the leader to re-read now.

Polling (not watching) keeps a lost etcd connection a non-event: the next poll just works.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from routeiq.config.source import read_config_bytes, read_config_text
from routeiq.errors import ConfigError, describe
from routeiq.leadership.election import ElectionUnavailable, LeaderTerm
from routeiq.lifecycle.reload import Reloader, ReloadResult, digest_of

__all__ = ["EtcdConfigSync", "FileWatcher", "Published"]

Sleep = Callable[[float], Awaitable[object]]


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

    def __init__(
        self, reloader: Reloader, path: Path, *, poll_s: float, sleep: Sleep = anyio.sleep
    ) -> None:
        self._reloader = reloader
        self._path = path
        self._poll_s = poll_s
        self._sleep = sleep
        self._seen: str | None = None
        self._status: str | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # What is running was loaded from this file: its digest is the content already seen.
        self._seen = self._reloader.running_digest()
        task_status.started()
        while True:
            await self._sleep(self._poll_s)
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


@dataclass(frozen=True, slots=True)
class Published:
    revision: int
    digest: str
    text: str


class EtcdConfigSync:
    """Publishes (as leader) and follows (every worker) the config through etcd."""

    def __init__(
        self,
        reloader: Reloader,
        path: Path | None,
        *,
        prefix: str,
        host: str,
        port: int,
        fenced_put: Callable[[str, str, LeaderTerm], Awaitable[None]],
        poll_s: float,
        request_timeout_s: float,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self._reloader = reloader
        self._path = path
        self._prefix = prefix
        self._host, self._port = host, port
        self._fenced_put = fenced_put
        self._poll_s = poll_s
        self._timeout = request_timeout_s
        self._sleep = sleep
        self._client: Any = None
        self._rejection_seen: int | None = None  # mod revision of the rejection key, once read
        self._last_followed = 0
        self._last_request: int | None = None
        self._publish_now = anyio.Event()

    @property
    def config_key(self) -> str:
        return f"{self._prefix}/config"

    @property
    def rejected_key(self) -> str:
        return f"{self._prefix}/config-rejected"

    # --- every worker -----------------------------------------------------------------------

    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        import aetcd

        async with aetcd.Client(host=self._host, port=self._port, timeout=self._timeout) as client:
            self._client = client
            task_status.started()
            try:
                while True:
                    await self._follow_once()
                    await self._sleep(self._poll_s)
            finally:
                self._client = None

    async def _follow_once(self) -> None:
        try:
            published = await self.read()
            rejected = await self._get_kv(self.rejected_key)
        except ElectionUnavailable:
            return  # etcd unreachable: keep serving what we have, try again next poll
        if published is not None and published.revision > self._last_followed:
            self._last_followed = published.revision
            await self._reloader.apply(published.text, revision=published.revision, origin="etcd")
        seen, self._rejection_seen = self._rejection_seen, 0 if rejected is None else rejected[1]
        if rejected is not None and seen is not None and rejected[1] != seen:
            record = json.loads(rejected[0])
            self._reloader.record_rejected(record["digest"], record["error"], origin="etcd")

    async def read(self) -> Published | None:
        found = await self._read_with_revision()
        return None if found is None else found[0]

    async def _read_with_revision(self) -> tuple[Published, int] | None:
        found = await self._get_kv(self.config_key)
        if found is None:
            return None
        data = json.loads(found[0])
        return Published(int(data["revision"]), str(data["digest"]), str(data["text"])), found[1]

    async def request_reload(self) -> None:
        """Ask the leader (whoever it is) to re-read its config file now."""
        await self._call(
            self._connected().put(
                f"{self._prefix}/reload-request".encode(), uuid.uuid4().hex.encode()
            )
        )

    # --- the leader -------------------------------------------------------------------------

    async def publish_as_leader(self, term: LeaderTerm) -> None:
        """Leader work: publish the file whenever it changes (or a reload is requested)."""
        while True:
            # etcd unreachable: the elector decides about leadership; this just retries.
            with contextlib.suppress(ElectionUnavailable):
                await self.publish_once(term, force=False)
            with anyio.move_on_after(self._poll_s):
                await self._publish_now.wait()
            self._publish_now = anyio.Event()

    async def publish_once(self, term: LeaderTerm, *, force: bool) -> ReloadResult | None:
        if self._path is None:
            return None
        text = _read(self._path)
        if text is None:
            return None
        digest = digest_of(text)
        requested = await self._reload_requested()
        found = await self._read_with_revision()
        published, published_at = (None, 0) if found is None else found
        if published is not None and published.digest == digest and not (force or requested):
            return None
        revision = 1 if published is None else published.revision + 1
        if published is not None and published.digest == digest:
            return ReloadResult("unchanged", published.revision, digest)
        if not (force or requested):
            already = await self._rejected_since(digest, published_at)
            if already is not None:
                return ReloadResult("rejected", revision - 1, digest, already)
        try:
            self._reloader.validate(text, str(self._path))
        except Exception as exc:
            error = describe(exc)
            record = json.dumps({"digest": digest, "error": error})
            await self._fenced_put(self.rejected_key, record, term)
            return ReloadResult("rejected", revision - 1, digest, error)
        body = json.dumps({"revision": revision, "digest": digest, "text": text})
        await self._fenced_put(self.config_key, body, term)  # LeadershipLost if deposed: the
        # elector then steps down and cancels this work.
        return ReloadResult("published", revision, digest)

    def publish_soon(self) -> None:
        self._publish_now.set()

    async def _reload_requested(self) -> bool:
        found = await self._get_kv(f"{self._prefix}/reload-request")
        raw = None if found is None else found[1]
        if raw is None or raw == self._last_request:
            return False
        first = self._last_request is None
        self._last_request = raw
        return not first

    async def _rejected_since(self, digest: str, published_at: int) -> str | None:
        """The error ``digest`` was rejected with after the current publication, if it was."""
        found = await self._get_kv(self.rejected_key)
        if found is None or found[1] < published_at:
            return None
        record = json.loads(found[0])
        return str(record["error"]) if record["digest"] == digest else None

    # --- etcd access -----------------------------------------------------------------------

    def _connected(self) -> Any:
        if self._client is None:
            raise ElectionUnavailable("the config follower is not connected to etcd")
        return self._client

    async def _get_kv(self, key: str) -> tuple[str, int] | None:
        """``(value, mod_revision)`` of ``key``, or ``None`` if it does not exist."""
        got = await self._call(self._connected().get(key.encode()))
        return None if got is None else (bytes(got.value).decode(), int(got.mod_revision))

    async def _call(self, request: Awaitable[Any]) -> Any:
        import aetcd.exceptions

        try:
            with anyio.fail_after(self._timeout):
                return await request
        except (TimeoutError, aetcd.exceptions.ClientError) as exc:
            raise ElectionUnavailable(f"etcd: {exc}") from exc
