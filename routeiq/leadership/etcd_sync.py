"""Config sync through etcd: the leader publishes its config file, every worker follows.

Keys under the prefix:

- ``config``: ``{"revision", "digest", "text"}``, the config **as written** (``os.environ/NAME``
  references, never their values; a text with a literal secret is refused, see
  ``publishable``). Only the leader writes it, in a transaction that compares its fencing
  token, so a deposed leader's write fails. Every worker polls it and hot-swaps.
- ``config-rejected``: ``{"digest", "error"}``, written by the leader when its file is invalid;
  each put is one rejection, recorded once by each worker that was following then.
- ``reload-request``: an id put by any worker (``POST /_admin/reload``); the leader re-reads its
  file and answers in ``reload-result`` (``{"request", "leader", "result", "revision",
  "digest", "error"}``), which the asking worker waits for.

The leader's publish is total, as the local ``FileWatcher``'s reload is: the file is read,
decoded and parsed through ``routeiq.config.source`` in a worker thread (regular files only,
bounded size and aliases), and every outcome is published or a ``config-rejected`` record with
reasons. An unreadable file (a FIFO, non-UTF-8, too large) is keyed by its error and file status,
a bad content by its digest: each is rejected once and retried only when the file changes (or a
reload is requested). Only the Router build of a parsed config runs on the event loop.

Guarantees: whatever is stored under the prefix (someone's ``etcdctl put``, a value from an
older or newer version) never crashes a worker: a value that is not what this module writes is
a rejected ``config`` event, once per distinct etcd revision, and the current config keeps
serving. Polling (not watching) keeps a lost etcd connection a non-event: the next poll works.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from routeiq.config.model import GatewayConfig
from routeiq.config.problems import scrub_fragments
from routeiq.config.reload import Reloader, ReloadResult, digest_of
from routeiq.config.source import decode_config, file_status, read_config_bytes
from routeiq.errors import ConfigError, GatewayError, describe
from routeiq.leadership.election import ElectionUnavailable, LeaderTerm
from routeiq.leadership.etcd_client import (
    EtcdEndpoint,
    is_auth_error,
    stray_cancellation_is_unavailable,
)
from routeiq.leadership.publishable import check_publishable, literal_secrets
from routeiq.lifecycle.clock import Clock

__all__ = ["MAX_PUBLISHED_BYTES", "EtcdConfigSync", "Published", "ReloadAnswer"]


# etcd refuses requests over 1.5 MiB by default; a config is far smaller than that.
MAX_PUBLISHED_BYTES = 1024 * 1024


class MalformedValue(GatewayError):
    """A value under the key prefix is not what this module writes there."""


@dataclass(frozen=True, slots=True)
class Published:
    revision: int
    digest: str
    text: str


@dataclass(frozen=True, slots=True)
class ReloadAnswer:
    """The leader's answer to one reload request."""

    request: str
    leader: str
    result: str
    revision: int
    digest: str
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "leader": self.leader,
            "result": self.result,
            "revision": self.revision,
            "digest": self.digest,
            "error": self.error,
        }


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedValue(f"{what} is not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise MalformedValue(f"{what} is not a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedValue(f"{what} has no {kind.__name__} field {name!r}")
    return value


def decode_published(raw: bytes) -> Published:
    what = "the published config"
    data = _json_object(raw, what)
    revision = _field(data, "revision", int, what)
    if revision < 1:
        raise MalformedValue(f"{what} has a revision below 1")
    return Published(revision, _field(data, "digest", str, what), _field(data, "text", str, what))


def decode_answer(raw: bytes) -> ReloadAnswer:
    what = "the reload result"
    data = _json_object(raw, what)
    error = data.get("error")
    return ReloadAnswer(
        request=_field(data, "request", str, what),
        leader=_field(data, "leader", str, what),
        result=_field(data, "result", str, what),
        revision=_field(data, "revision", int, what),
        digest=_field(data, "digest", str, what),
        error=error if isinstance(error, str) else None,
    )


def read_source(path: Path) -> str:
    """The config file's text, read as every config is (``routeiq.config.source``: regular
    files only, never waiting on a FIFO, UTF-8 errors with their position) and no larger than
    etcd takes; ``ConfigError`` otherwise, never another exception. Blocking: call it in a
    worker thread."""
    data = read_config_bytes(path)
    if len(data) > MAX_PUBLISHED_BYTES:
        raise ConfigError(
            [
                (
                    "config file",
                    f"{path} is {len(data)} bytes: more than etcd takes ({MAX_PUBLISHED_BYTES})",
                )
            ],
            source=str(path),
        )
    return decode_config(data, source=str(path))


class EtcdConfigSync:
    """Publishes (as leader) and follows (every worker) the config through etcd."""

    def __init__(
        self,
        reloader: Reloader,
        path: Path | None,
        *,
        prefix: str,
        endpoint: EtcdEndpoint,
        fenced_put: Callable[[str, str, LeaderTerm], Awaitable[None]],
        poll_s: float,
        clock: Clock,
    ) -> None:
        self._reloader = reloader
        self._path = path
        self._prefix = prefix
        self._endpoint = endpoint
        self._fenced_put = fenced_put
        self._poll_s = poll_s
        self._timeout = endpoint.timeout_s
        self._clock = clock
        self._client: Any = None
        self._rejection_seen: int | None = None  # mod revision of the rejection key, once read
        self._last_followed = 0
        self._malformed_seen: dict[str, int] = {}  # key -> mod revision already reported
        self._publish_now = anyio.Event()
        self._followed = anyio.Event()
        self._settled = 0  # the last revision followed to the end (applied or rejected)

    @property
    def config_key(self) -> str:
        return f"{self._prefix}/config"

    @property
    def rejected_key(self) -> str:
        return f"{self._prefix}/config-rejected"

    @property
    def request_key(self) -> str:
        return f"{self._prefix}/reload-request"

    @property
    def answer_key(self) -> str:
        return f"{self._prefix}/reload-result"

    @property
    def path(self) -> Path | None:
        return self._path

    # --- every worker -----------------------------------------------------------------------

    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Not connected yet: aetcd connects (and authenticates) on the first call.
        client = self._endpoint.client()
        self._client = client
        try:
            task_status.started()
            while True:
                await self._follow_once()
                await self._clock.sleep(self._poll_s)
        finally:
            self._client = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                await client.close()

    async def _follow_once(self) -> None:
        try:
            found = await self._get_raw(self.config_key)
            rejected = await self._get_raw(self.rejected_key)
        except ElectionUnavailable:
            return  # etcd unreachable: keep serving what we have, try again next poll
        if found is not None:
            await self._follow_config(*found)
        seen, self._rejection_seen = self._rejection_seen, 0 if rejected is None else rejected[1]
        if rejected is not None and seen is not None and rejected[1] != seen:
            try:
                record = _json_object(rejected[0], "the rejection record")
                digest = _field(record, "digest", str, "the rejection record")
                error = _field(record, "error", str, "the rejection record")
            except MalformedValue as exc:
                self._report_malformed(self.rejected_key, rejected, exc)
            else:
                self._reloader.record_rejected(digest, error, origin="etcd")

    async def wait_followed(self, revision: int) -> None:
        """Wait until this worker has followed ``revision`` (or a later one): applied it, or
        recorded why not."""
        while self._settled < revision:
            await self._followed.wait()

    async def _follow_config(self, raw: bytes, mod_revision: int) -> None:
        try:
            await self._follow_published(raw, mod_revision)
        finally:
            self._settled = self._last_followed
            self._followed.set()
            self._followed = anyio.Event()

    async def _follow_published(self, raw: bytes, mod_revision: int) -> None:
        try:
            published = decode_published(raw)
        except MalformedValue as exc:
            self._report_malformed(self.config_key, (raw, mod_revision), exc)
            return
        if published.revision <= self._last_followed:
            return
        self._last_followed = published.revision
        # Also checked here, not only by the publisher: anyone with write access to etcd can put
        # a value, and a literal secret must not start serving from it.
        paths = await anyio.to_thread.run_sync(literal_secrets, published.text)
        if paths:
            error = ConfigError(
                [(p, "a literal secret in the config published to etcd: refused") for p in paths],
                source=f"etcd {self.config_key} revision {published.revision}",
            )
            self._reloader.record_rejected(
                digest_of(published.text), describe(error), origin="etcd"
            )
            return
        await self._reloader.apply(published.text, revision=published.revision, origin="etcd")

    def _report_malformed(
        self, key: str, found: tuple[bytes, int], problem: MalformedValue
    ) -> None:
        raw, mod_revision = found
        if self._malformed_seen.get(key) == mod_revision:
            return
        self._malformed_seen[key] = mod_revision
        self._reloader.record_rejected(
            digest_of(raw.decode("utf-8", errors="replace")),
            f"etcd key {key} at revision {mod_revision}: {problem}; the current config keeps "
            "serving",
            origin="etcd",
        )

    async def read(self) -> Published | None:
        """The published config, ``None`` if there is none; ``MalformedValue`` if unreadable."""
        found = await self._get_raw(self.config_key)
        return None if found is None else decode_published(found[0])

    # --- reload requests (any worker) -------------------------------------------------------

    async def request_reload(self) -> str:
        """Ask the leader (whoever it is) to re-read its config file now; returns the id."""
        request = uuid.uuid4().hex
        await self._call(self._connected().put(self.request_key.encode(), request.encode()))
        self._publish_now.set()  # if this worker leads, it answers at once
        return request

    async def wait_answer(self, request: str, *, within: float) -> ReloadAnswer | None:
        """The leader's answer to ``request``, or ``None`` if none came ``within`` seconds."""
        with anyio.move_on_after(within):
            while True:
                with contextlib.suppress(ElectionUnavailable, MalformedValue):
                    found = await self._get_raw(self.answer_key)
                    if found is not None:
                        answer = decode_answer(found[0])
                        if answer.request == request:
                            return answer
                await anyio.sleep(min(0.05, self._poll_s))
        return None

    # --- the leader -------------------------------------------------------------------------

    async def publish_as_leader(self, term: LeaderTerm) -> None:
        """Leader work: publish the file whenever it changes; answer reload requests."""
        while True:
            # etcd unreachable: the elector decides about leadership; this just retries.
            with contextlib.suppress(ElectionUnavailable):
                if not await self._answer_request(term):
                    await self.publish_once(term, force=False)
            with anyio.move_on_after(self._poll_s):
                await self._publish_now.wait()
            self._publish_now = anyio.Event()

    def publish_soon(self) -> None:
        self._publish_now.set()

    async def _answer_request(self, term: LeaderTerm) -> bool:
        """Answer the pending reload request, if there is one; whether there was."""
        request = await self._get_raw(self.request_key)
        if request is None:
            return False
        request_id = request[0].decode("utf-8", errors="replace")
        answered = await self._get_raw(self.answer_key)
        if answered is not None:
            with contextlib.suppress(MalformedValue):
                if decode_answer(answered[0]).request == request_id:
                    return False
        result = await self.publish_once(term, force=True)
        if result is None:
            result = ReloadResult("rejected", self._last_followed, "", "no config file to read")
        answer = ReloadAnswer(
            request_id, term.holder_id, result.result, result.revision, result.digest, result.error
        )
        await self._fenced_put(self.answer_key, json.dumps(answer.to_dict()), term)
        return True

    async def publish_once(self, term: LeaderTerm, *, force: bool) -> ReloadResult | None:
        if self._path is None:
            return None
        found = await self._get_raw(self.config_key)
        published: Published | None = None
        published_at = 0
        if found is not None:
            published_at = found[1]
            with contextlib.suppress(MalformedValue):  # a bad value is replaced, not followed
                published = decode_published(found[0])
        base = max(self._last_followed, 0 if published is None else published.revision)
        if found is not None and published is None:
            base = max(base, published_at)  # past any revision the bad value replaced
        path = self._path
        try:
            text: str | None = await anyio.to_thread.run_sync(read_source, path)
        except ConfigError as exc:
            text, unusable = None, exc
        if text is not None:
            digest = digest_of(text)
        else:
            # An unreadable file has no content to key on: its error and status are the key,
            # so it is rejected once and tried again only when the file changes.
            status = await anyio.to_thread.run_sync(file_status, path)
            digest = digest_of(f"{unusable.render()}|{status}")
        if published is not None and published.digest == digest:
            return None if not force else ReloadResult("unchanged", published.revision, digest)
        if not force:
            already = await self._rejected_since(digest, published_at)
            if already is not None:
                return ReloadResult("rejected", base, digest, already)
        config: GatewayConfig | None = None
        try:
            if text is None:
                raise unusable
            # Decoding, secret detection and parsing are bounded but CPU-bound: off the loop.
            config = await anyio.to_thread.run_sync(self._parse_publishable, text, str(path))
            self._reloader.check_switchable(config)  # the Router build: on the loop, as apply
        except Exception as exc:  # any failure: nothing is published, every worker is told
            error = describe(exc)
            if config is not None:
                error = scrub_fragments(error, config.secrets)
            body = json.dumps({"digest": digest, "error": error})
            await self._fenced_put(self.rejected_key, body, term)
            return ReloadResult("rejected", base, digest, error)
        revision = base + 1
        body = json.dumps({"revision": revision, "digest": digest, "text": text})
        await self._fenced_put(self.config_key, body, term)  # LeadershipLost if deposed: the
        # elector then steps down and cancels this work.
        return ReloadResult("published", revision, digest)

    def _parse_publishable(self, text: str, source: str) -> GatewayConfig:
        """``text`` parsed as the gateway would; ``ConfigError`` if it has a literal secret."""
        check_publishable(text, source=source)
        return self._reloader.parse(text, source)

    async def _rejected_since(self, digest: str, published_at: int) -> str | None:
        """The error ``digest`` was rejected with after the current publication, if it was."""
        found = await self._get_raw(self.rejected_key)
        if found is None or found[1] < published_at:
            return None
        try:
            record = _json_object(found[0], "the rejection record")
        except MalformedValue:
            return None
        error = record.get("error")
        return str(error) if record.get("digest") == digest else None

    # --- etcd access -----------------------------------------------------------------------

    def _connected(self) -> Any:
        if self._client is None:
            raise ElectionUnavailable("the config follower is not connected to etcd")
        return self._client

    async def _get_raw(self, key: str) -> tuple[bytes, int] | None:
        """``(value, mod_revision)`` of ``key``, or ``None`` if it does not exist."""
        got = await self._call(self._connected().get(key.encode()))
        return None if got is None else (bytes(got.value), int(got.mod_revision))

    async def _call(self, request: Awaitable[Any]) -> Any:
        import aetcd.exceptions

        try:
            with stray_cancellation_is_unavailable(), anyio.fail_after(self._timeout):
                return await request
        except (TimeoutError, aetcd.exceptions.ClientError) as exc:
            if is_auth_error(exc) and self._client is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                    await self._client.close()  # the next call authenticates again
            raise ElectionUnavailable(f"etcd: {exc}") from exc
