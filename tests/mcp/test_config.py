"""``routeiq.mcp`` validation and the SSRF guard, without servers."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from routeiq.config.loader import parse_config
from routeiq.config.mcp import McpServerSpec
from routeiq.errors import ConfigError
from routeiq.mcp.guard import HostGuard, UrlRefused

pytestmark = pytest.mark.anyio

MODELS = [{"model_name": "m", "litellm_params": {"model": "openai/m"}}]


def parse(mcp: dict[str, object]) -> object:
    return parse_config({"model_list": MODELS, "routeiq": {"mcp": mcp}}, {}, source="t.yaml")


def test_bad_servers_name_each_field() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({
            "servers": [
                {"name": "Has.Dot", "url": "http://example.com/mcp"},
                {"name": "ok", "url": "ftp://example.com"},
                {"name": "creds", "url": "https://u:p@example.com/mcp"},
            ]
        })  # fmt: skip
    paths = {path for path, _ in caught.value.problems}
    assert "routeiq.mcp.servers[0].name" in paths
    assert "routeiq.mcp.servers[1].url" in paths
    assert "routeiq.mcp.servers[2].url" in paths


def test_config_server_inside_the_network_needs_the_allow_list() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"servers": [{"name": "local", "url": "http://127.0.0.1:9/mcp"}]})
    assert "allow_hosts" in caught.value.render()
    config = parse({
        "servers": [{"name": "local", "url": "http://127.0.0.1:9/mcp"}],
        "allow_hosts": ["127.0.0.0/8"],
    })  # fmt: skip
    assert config.routeiq.mcp.servers[0].name == "local"  # type: ignore[attr-defined]


def test_duplicate_server_names_are_refused() -> None:
    server = {"name": "a", "url": "https://example.com/mcp"}
    with pytest.raises(ConfigError, match="repeated: a"):
        parse({"servers": [server, server]})


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/mcp",
        "http://192.168.1.1/mcp",
        "http://169.254.169.254/latest",
        "http://[::1]:8000/mcp",
        "http://localhost/mcp",
        "http://0.0.0.0/mcp",
    ],
)
def test_guard_refuses_private_and_local_hosts(url: str) -> None:
    with pytest.raises(UrlRefused, match="allow_hosts"):
        HostGuard(()).check_url(url)


def test_guard_allows_listed_hosts_and_public_addresses() -> None:
    guard = HostGuard(["10.0.0.0/8", "mcp.internal"])
    assert guard.check_url("http://10.2.3.4/mcp") == "10.2.3.4"
    assert guard.check_url("http://mcp.internal/mcp") == "mcp.internal"
    assert guard.check_url("https://8.8.8.8/mcp") == "8.8.8.8"


async def test_guard_checks_what_a_name_resolves_to() -> None:
    # This host's own name passes the literal check but resolves to a non-public address.
    name = socket.gethostname()
    addresses = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(name, None)}
    if all(address.is_global for address in addresses):
        pytest.skip(f"{name} resolves to public addresses only")
    guard = HostGuard(())
    assert guard.check_url(f"http://{name}:9/mcp") == name.lower()
    with pytest.raises(UrlRefused, match="non-public"):
        await guard.check_resolved(f"http://{name}:9/mcp")
    await HostGuard([name]).check_resolved(f"http://{name}:9/mcp")


def test_allow_and_deny_lists() -> None:
    spec = McpServerSpec(
        name="s",
        url="https://example.com/mcp",
        tools_allow=("read_*", "list"),
        tools_deny=("read_secret",),
    )
    assert [t for t in ("read_file", "read_secret", "list", "write") if spec.exposes(t)] == [
        "read_file",
        "list",
    ]
    assert spec.public_view()["headers"] == {}
