"""Leadership among the worker processes of one host: an exclusive ``flock`` on a lock file.

Guarantees: at most one open lock file description holds the lock, so at most one process
(and one ``LocalElection`` within it) leads; the kernel releases the lock when its holder
dies, however it dies. Each new leader increments a counter in a sidecar file
(``<lock>.term``) while it holds the lock, which gives a fencing token that grows across
leaders. It does not coordinate hosts (use the etcd backend), and it cannot fence writes made
outside this host. Deleting or replacing the lock file ends the current term.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path

import anyio
import anyio.lowlevel

from routeiq.errors import ConfigError, LeadershipLost
from routeiq.leadership.election import ElectionUnavailable, LeaderTerm, LeaderTimings
from routeiq.lifecycle.clock import Clock, SystemClock

__all__ = ["LocalElection"]

log = logging.getLogger(__name__)


class LocalElection:
    """``Election`` backend on ``fcntl.flock(LOCK_EX | LOCK_NB)``, polled every retry period."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        candidate_id: str,
        *,
        timings: LeaderTimings | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not candidate_id:
            raise ConfigError([("candidate_id", "must be a non-empty string")])
        self._path = Path(path)
        self._term_path = self._path.with_name(self._path.name + ".term")
        self._candidate_id = candidate_id
        self._timings = timings or LeaderTimings()
        self._clock: Clock = clock or SystemClock()
        self._fd: int | None = None
        self._term: LeaderTerm | None = None
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
    def path(self) -> Path:
        return self._path

    async def campaign(self) -> LeaderTerm | None:
        if self._term is not None:
            return self._term
        await anyio.lowlevel.checkpoint()
        sent = self._clock.monotonic()
        try:
            # Non-blocking flock and a few bytes of a local file: done inline, not in a worker
            # thread (a thread would outlive the gateway by anyio's idle timeout).
            fd, token, holder = self._try_acquire()
        except OSError as exc:
            raise ElectionUnavailable(f"lock file {self._path}: {exc}") from exc
        self._leader_id = holder
        if fd is None:
            return None
        self._fd = fd
        self._term = LeaderTerm(self._candidate_id, token, sent)
        return self._term

    async def renew(self, term: LeaderTerm) -> None:
        if term != self._term or self._fd is None:
            raise LeadershipLost(f"term {term.fencing_token} is not held by this process")
        try:
            reason = self._check_held(self._fd, term)
            await anyio.lowlevel.checkpoint()
        except OSError as exc:
            raise ElectionUnavailable(f"lock file {self._path}: {exc}") from exc
        if reason is not None:
            self._release()
            raise LeadershipLost(reason)

    async def resign(self, term: LeaderTerm) -> None:
        if term == self._term:
            self._release()

    async def wait_vacancy(self, period: float) -> bool:
        if await self._probe():
            return True
        await anyio.sleep(period)
        return await self._probe()

    async def aclose(self) -> None:
        self._release()

    async def __aenter__(self) -> LocalElection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _release(self) -> None:
        fd, self._fd, self._term = self._fd, None, None
        if self._leader_id == self._candidate_id:
            self._leader_id = None
        if fd is not None:
            # Closing the last descriptor of the open file description drops the flock.
            os.close(fd)

    async def _probe(self) -> bool:
        try:
            free, holder = self._test_lock()
            await anyio.lowlevel.checkpoint()
        except OSError as exc:
            log.warning("leadership lock file %s is unusable: %s", self._path, exc)
            return False
        self._leader_id = None if free else holder
        return free

    def _open(self) -> int:
        return os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _try_acquire(self) -> tuple[int | None, int, str | None]:
        """``(fd, token, holder)``: ``fd`` is ``None`` when another descriptor holds the lock."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            token, holder = self._read_term(strict=False)
            return None, token, holder
        except BaseException:
            os.close(fd)
            raise
        try:
            if not self._same_file(fd):
                # The file was replaced between open and flock: this lock guards nothing.
                os.close(fd)
                return None, 0, None
            token = self._read_term(strict=True)[0] + 1
            self._write_term(token)
        except BaseException:
            os.close(fd)
            raise
        return fd, token, self._candidate_id

    def _test_lock(self) -> tuple[bool, str | None]:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False, self._read_term(strict=False)[1]
        finally:
            os.close(fd)
        return True, None

    def _check_held(self, fd: int, term: LeaderTerm) -> str | None:
        if not self._same_file(fd):
            return f"lock file {self._path} was removed or replaced"
        token, holder = self._read_term(strict=False)
        if (token, holder) != (term.fencing_token, term.holder_id):
            return f"term file {self._term_path} names term {token} of {holder!r}"
        return None

    def _same_file(self, fd: int) -> bool:
        try:
            held, named = os.fstat(fd), os.stat(self._path)
        except FileNotFoundError:
            return False
        return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)

    def _read_term(self, *, strict: bool) -> tuple[int, str | None]:
        try:
            data = json.loads(self._term_path.read_text(encoding="utf-8"))
            return int(data["token"]), str(data["holder"])
        except FileNotFoundError:
            return 0, None
        except (ValueError, KeyError, TypeError) as exc:
            if not strict:
                return 0, None
            # Restarting the count would hand out tokens that were already used.
            raise ElectionUnavailable(
                f"term file {self._term_path} is unreadable ({exc}); tokens cannot grow past "
                "it. Stop all workers and delete it to restart the count"
            ) from exc

    def _write_term(self, token: int) -> None:
        tmp = self._term_path.with_name(f"{self._term_path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"token": token, "holder": self._candidate_id}), "utf-8")
            os.replace(tmp, self._term_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
