"""EtcdConfigSync against a real etcd: what may be published, what a follower does with
whatever it finds under the prefix, and reload requests answered by the leader.

The reloader is a recording double around the real config parser: building Routers is the
gateway's business (tested with real processes in ``tests/server/test_cluster.py``); here the
question is which texts reach it, and how often.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from routeiq.config.loader import parse_config_text
from routeiq.config.reload import ReloadResult, digest_of
from routeiq.leadership import EtcdElection, LeaderTerm, LeaderTimings
from routeiq.leadership.etcd_sync import EtcdConfigSync
from routeiq.lifecycle.clock import SystemClock
from tests.support.etcd import EtcdServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

PREFIX = "/routeiq/sync-test"
UPSTREAM_KEY = "sk-upstream-7d41c9a0b2e8"
ENV = {"UPSTREAM_KEY": UPSTREAM_KEY}


@pytest.fixture(scope="module", autouse=True)
async def one_event_loop_for_grpc() -> AsyncIterator[None]:
    yield
    await anyio.sleep(0.2)


def config_text(models: list[str], api_key: str = "os.environ/UPSTREAM_KEY") -> str:
    data = {
        "model_list": [
            {"model_name": m, "litellm_params": {"model": f"openai/{m}", "api_key": api_key}}
            for m in models
        ]
    }
    return yaml.safe_dump(data)


@dataclass
class RecordingReloader:
    """Stands in for ``routeiq.config.reload.Reloader``: validates with the real parser and
    records what it was asked to apply or reject."""

    applied: list[tuple[int | None, str]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    parsed_on: list[int] = field(default_factory=list)  # thread ids

    def parse(self, text: str, source: str) -> Any:
        self.parsed_on.append(threading.get_ident())
        return parse_config_text(text, ENV, source=source)

    def check_switchable(self, config: Any) -> None:
        pass

    async def apply(self, text: str, *, revision: int | None, origin: str) -> ReloadResult:
        self.applied.append((revision, text))
        self._changed()
        return ReloadResult("applied", revision or 0, digest_of(text))

    def record_rejected(self, digest: str, error: str, *, origin: str) -> None:
        self.rejected.append(error)
        self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait(self, check: Any, within: float = 10) -> None:
        with anyio.fail_after(within):
            while not check():
                await self.changed.wait()


@dataclass
class Node:
    sync: EtcdConfigSync
    reloader: RecordingReloader
    election: EtcdElection
    path: Path


@asynccontextmanager
async def node(etcd: EtcdServer, path: Path, name: str) -> AsyncIterator[Node]:
    """A worker: an election (not campaigning unless a test asks) and a following sync."""
    reloader = RecordingReloader()
    timings = LeaderTimings(lease_duration=3, renew_deadline=2, retry_period=0.3)
    async with EtcdElection(
        name, endpoint=etcd.client_endpoint(), key=f"{PREFIX}/leader", timings=timings
    ) as election:

        async def fenced_put(key: str, value: str, term: LeaderTerm) -> None:
            await election.fenced_put(key, value, term=term)

        sync = EtcdConfigSync(
            reloader,  # type: ignore[arg-type]
            path,
            prefix=PREFIX,
            endpoint=etcd.client_endpoint(),
            fenced_put=fenced_put,
            poll_s=0.05,
            clock=SystemClock(),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sync.follow)
            yield Node(sync, reloader, election, path)
            tg.cancel_scope.cancel()


async def lead(n: Node) -> LeaderTerm:
    term = await n.election.campaign()
    assert term is not None
    return term


async def test_a_literal_key_is_refused_and_a_reference_is_published_as_written(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(["m"], api_key=UPSTREAM_KEY), encoding="utf-8")
    async with node(etcd, path, "a") as a, etcd.client() as admin:
        term = await lead(a)
        result = await a.sync.publish_once(term, force=False)
        assert result is not None and result.result == "rejected" and result.error is not None
        assert "model_list[0].litellm_params.api_key" in result.error
        assert "os.environ/NAME" in result.error
        # No fragment of the key, anywhere: the result, etcd, the recorded rejection.
        assert UPSTREAM_KEY[3:11] not in result.error
        assert await admin.get(f"{PREFIX}/config".encode()) is None
        await a.reloader.wait(lambda: a.reloader.rejected)
        assert all(UPSTREAM_KEY[3:11] not in error for error in a.reloader.rejected)
        assert a.reloader.applied == []

        path.write_text(config_text(["m"]), encoding="utf-8")
        result = await a.sync.publish_once(term, force=False)
        assert result is not None and result.result == "published"
        stored = (await admin.get(f"{PREFIX}/config".encode())).value
        assert b"os.environ/UPSTREAM_KEY" in stored and UPSTREAM_KEY[3:11].encode() not in stored
        await a.reloader.wait(lambda: a.reloader.applied)
        assert a.reloader.applied == [(result.revision, config_text(["m"]))]


async def test_a_follower_refuses_a_literal_key_put_into_etcd_by_hand(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    text = config_text(["m"], api_key=UPSTREAM_KEY)
    body = {"revision": 7, "digest": digest_of(text), "text": text}
    async with node(etcd, tmp_path / "none.yaml", "a") as a, etcd.client() as admin:
        await admin.put(f"{PREFIX}/config".encode(), json.dumps(body).encode())
        await a.reloader.wait(lambda: a.reloader.rejected)
        [error] = a.reloader.rejected
        assert "model_list[0].litellm_params.api_key" in error and "revision 7" in error
        assert UPSTREAM_KEY[3:11] not in error
        await anyio.sleep(0.3)  # several polls: still one rejection, nothing applied
        assert len(a.reloader.rejected) == 1 and a.reloader.applied == []


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe not utf-8",
        b"not json",
        b'["a", "list"]',
        b'{"revision": "7", "digest": "d", "text": "t"}',
        b'{"revision": 0, "digest": "d", "text": "t"}',
        b'{"revision": 3, "digest": "d"}',
    ],
)
async def test_a_malformed_value_is_one_rejection_per_revision_and_never_a_crash(
    etcd: EtcdServer, tmp_path: Path, value: bytes
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(["m"]), encoding="utf-8")
    key = f"{PREFIX}/config".encode()
    async with node(etcd, path, "a") as a, etcd.client() as admin:
        await admin.put(key, value)
        await a.reloader.wait(lambda: a.reloader.rejected)
        assert f"{PREFIX}/config at revision" in a.reloader.rejected[0]
        await anyio.sleep(0.3)  # several polls of the same bad revision
        assert len(a.reloader.rejected) == 1
        await admin.put(key, value)  # the same bytes again: a new etcd revision, a new event
        await a.reloader.wait(lambda: len(a.reloader.rejected) == 2)
        bad_revision = (await admin.get(key)).mod_revision

        # The follower still follows, and a leader replaces the bad value with a revision
        # above anything the bad value may have hidden.
        term = await lead(a)
        result = await a.sync.publish_once(term, force=False)
        assert result is not None and result.result == "published"
        assert result.revision > bad_revision
        await a.reloader.wait(lambda: a.reloader.applied)
        assert a.reloader.applied == [(result.revision, config_text(["m"]))]
        assert len(a.reloader.rejected) == 2


async def test_a_malformed_rejection_record_is_reported_once(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    async with node(etcd, tmp_path / "none.yaml", "a") as a, etcd.client() as admin:
        await anyio.sleep(0.2)  # let it read the (absent) record first: later puts are news
        await admin.put(f"{PREFIX}/config-rejected".encode(), b"{broken")
        await a.reloader.wait(lambda: a.reloader.rejected)
        await anyio.sleep(0.3)
        [error] = a.reloader.rejected
        assert "config-rejected" in error and "not UTF-8 JSON" in error


async def test_a_reload_request_on_a_follower_is_answered_by_the_leader(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    leader_file, follower_file = tmp_path / "leader.yaml", tmp_path / "follower.yaml"
    leader_file.write_text(config_text(["m"]), encoding="utf-8")
    follower_file.write_text(config_text(["m"]), encoding="utf-8")
    async with (
        node(etcd, leader_file, "leader") as leader,
        node(etcd, follower_file, "follower") as follower,
        anyio.create_task_group() as tg,
    ):
        term = await lead(leader)
        tg.start_soon(leader.sync.publish_as_leader, term)
        await follower.reloader.wait(lambda: follower.reloader.applied)

        leader_file.write_text(config_text(["m", "n"]), encoding="utf-8")
        request = await follower.sync.request_reload()
        answer = await follower.sync.wait_answer(request, within=10)
        assert answer is not None
        # The leader may have seen the change on its own first: then it was already published.
        assert (answer.leader, answer.result) in {("leader", "published"), ("leader", "unchanged")}
        assert answer.digest == digest_of(config_text(["m", "n"]))
        published = await follower.sync.read()
        assert published is not None
        assert (published.revision, published.digest) == (answer.revision, answer.digest)

        request = await follower.sync.request_reload()  # nothing changed since
        answer = await follower.sync.wait_answer(request, within=10)
        assert answer is not None and answer.result == "unchanged"

        leader_file.write_text("model_list: []\n", encoding="utf-8")
        request = await follower.sync.request_reload()
        answer = await follower.sync.wait_answer(request, within=10)
        assert answer is not None and answer.result == "rejected"
        assert answer.error is not None and "model_list" in answer.error
        tg.cancel_scope.cancel()


async def test_without_a_leader_a_reload_request_gets_no_answer(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    async with node(etcd, tmp_path / "none.yaml", "a") as a:
        request = await a.sync.request_reload()
        assert await a.sync.wait_answer(request, within=0.5) is None


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)


def write_bad_source(path: Path, kind: str) -> None:
    if kind == "non-utf8":
        path.write_bytes(config_text(["m"]).encode() + b"# caf\xe9\n")
    elif kind == "alias-bomb":
        path.write_text(ALIAS_BOMB, encoding="utf-8")
    elif kind == "fifo":
        os.mkfifo(path)
    else:  # too large for etcd, though below the file reader's own limit
        path.write_text(config_text(["m"]) + "#" + "x" * (1024 * 1024) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("non-utf8", "not valid UTF-8: byte 0xe9 at line"),
        ("alias-bomb", "YAML expands to more than"),
        ("fifo", "a FIFO, not a regular file"),
        ("too-large", "more than etcd takes"),
    ],
)
async def test_an_unusable_file_is_one_rejection_retried_only_when_it_changes(
    etcd: EtcdServer, tmp_path: Path, kind: str, reason: str
) -> None:
    path = tmp_path / "config.yaml"
    write_bad_source(path, kind)
    rejected_key = f"{PREFIX}/config-rejected".encode()
    async with node(etcd, path, "a") as a, etcd.client() as admin:
        term = await lead(a)
        result = await a.sync.publish_once(term, force=False)
        assert result is not None and result.result == "rejected"
        assert result.error is not None and reason in result.error
        assert await admin.get(f"{PREFIX}/config".encode()) is None
        await a.reloader.wait(lambda: a.reloader.rejected)
        assert reason in a.reloader.rejected[0]
        put_at = (await admin.get(rejected_key)).mod_revision

        # Unchanged: the same rejection is answered, nothing is put again, nobody is told twice.
        for _ in range(3):
            again = await a.sync.publish_once(term, force=False)
            assert again is not None and again.result == "rejected" and again.error == result.error
        assert (await admin.get(rejected_key)).mod_revision == put_at
        await anyio.sleep(0.3)  # several follower polls
        assert len(a.reloader.rejected) == 1 and a.reloader.applied == []
        # Whatever was parsed was parsed off the event loop.
        assert threading.get_ident() not in a.reloader.parsed_on

        # Fixed: published and applied.
        path.unlink()
        path.write_text(config_text(["m"]), encoding="utf-8")
        fixed = await a.sync.publish_once(term, force=False)
        assert fixed is not None and fixed.result == "published"
        await a.reloader.wait(lambda: a.reloader.applied)
        assert a.reloader.applied == [(fixed.revision, config_text(["m"]))]
        assert threading.get_ident() not in a.reloader.parsed_on


async def test_an_unreadable_file_replaced_by_another_unreadable_one_is_a_new_rejection(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    os.mkfifo(path)
    async with node(etcd, path, "a") as a:
        term = await lead(a)
        first = await a.sync.publish_once(term, force=False)
        assert first is not None and first.result == "rejected"
        await a.reloader.wait(lambda: len(a.reloader.rejected) == 1)
        path.unlink()
        os.mkfifo(path)  # the same error, another file: tried again, rejected again
        second = await a.sync.publish_once(term, force=False)
        assert second is not None and second.result == "rejected"
        assert second.digest != first.digest
        await a.reloader.wait(lambda: len(a.reloader.rejected) == 2)


async def test_the_leader_keeps_publishing_after_rejecting_a_bad_file(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    """The leader's loop, not one call: a bad file is one rejection and never ends the loop."""
    path = tmp_path / "config.yaml"
    path.write_bytes(b"model_list: \xff\n")
    async with node(etcd, path, "a") as a, anyio.create_task_group() as tg:
        term = await lead(a)
        tg.start_soon(a.sync.publish_as_leader, term)
        await a.reloader.wait(lambda: a.reloader.rejected)
        path.write_text(config_text(["m"]), encoding="utf-8")
        a.sync.publish_soon()
        await a.reloader.wait(lambda: a.reloader.applied)
        assert len(a.reloader.rejected) == 1
        tg.cancel_scope.cancel()
