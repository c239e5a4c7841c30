"""Who reads the control plane: the read key (or the admin key) gets the full view, no key the
redacted one (still enough for probes and Prometheus), a wrong key a 401."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from routeiq.app import GatewayApp
from routeiq.http.control import REDACTED, redact_metrics
from tests.support.asgi import running_app

pytestmark = pytest.mark.anyio

READ_KEY = "read-key-4b1d9e77"
ADMIN_KEY = "admin-key-0c6a2f13"
UPSTREAM_KEY = "sk-upstream-a81f02c4d9"
MODEL = {
    "model_name": "m",
    "litellm_params": {"model": "openai/m", "mock_response": "hi", "api_key": UPSTREAM_KEY},
}


def write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data), encoding="utf-8")
    tmp.replace(path)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    """A serving gateway whose config was reloaded once with an error (a rejected event)."""
    config = tmp_path / "secret-place" / "config.yaml"
    config.parent.mkdir()
    write(config, {"model_list": [MODEL]})
    env = {"ROUTEIQ_READ_KEY": READ_KEY, "ROUTEIQ_ADMIN_KEY": ADMIN_KEY}
    app = GatewayApp(env=env, config_path=config)
    async with running_app(app) as client:
        write(config, {"model_list": [{**MODEL, "litellm_params": {"model": ""}}]})
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        assert (await client.post("/_admin/reload", headers=admin)).status_code == 422
        yield client, config


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_without_a_key_the_lifecycle_is_redacted(
    gateway: tuple[httpx.AsyncClient, Path],
) -> None:
    client, config = gateway
    got = await client.get("/_lifecycle")
    assert got.status_code == 200
    body = got.json()
    text = json.dumps(body)
    assert body["state"] == "serving" and body["ready"] and body["live"]
    assert "pid" not in body and "worker_id" not in body
    assert str(config.parent) not in text and "secret-place" not in text
    assert body["leadership"]["state"] == "leader" and body["leadership"]["has_leader"]
    assert "leader_id" not in body["leadership"] and "candidate_id" not in body["leadership"]
    [rejected] = [e for e in body["events"] if e["trigger"] == "rejected"]
    assert rejected["error"] == REDACTED and not rejected["ok"]
    assert all("pid" not in e and "worker_id" not in e for e in body["events"])

    startup = (await client.get("/_lifecycle/startup")).json()
    assert "worker_id" not in startup and startup["outcome"] == "serving"
    assert (await client.get("/metrics")).status_code == 200
    for probe in ("/health/live", "/health/ready"):
        assert (await client.get(probe)).status_code == 200


@pytest.mark.parametrize("key", [READ_KEY, ADMIN_KEY])
async def test_the_read_or_admin_key_gets_the_full_view(
    gateway: tuple[httpx.AsyncClient, Path], key: str
) -> None:
    client, config = gateway
    body = (await client.get("/_lifecycle", headers=bearer(key))).json()
    assert isinstance(body["pid"], int) and body["worker_id"]
    [rejected] = [e for e in body["events"] if e["trigger"] == "rejected"]
    assert str(config) in rejected["error"] and "model" in rejected["error"]
    assert UPSTREAM_KEY[3:12] not in json.dumps(body)  # full, yet never a secret
    assert body["leadership"]["leader_id"] == body["worker_id"]
    startup = (await client.get("/_lifecycle/startup", headers=bearer(key))).json()
    assert startup["worker_id"] == body["worker_id"]


async def test_a_wrong_key_is_refused(gateway: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = gateway
    for path in ("/_lifecycle", "/_lifecycle/startup", "/metrics"):
        got = await client.get(path, headers=bearer("not-a-key"))
        assert got.status_code == 401, path
    assert (await client.get("/health/live", headers=bearer("not-a-key"))).status_code == 200


def test_metrics_pids_become_stable_pseudonyms(tmp_path: Path) -> None:
    body = (
        b'gateway_lifecycle_state{pid="4242",state="serving"} 1.0\n'
        b'gateway_lifecycle_state{pid="4343",state="serving"} 1.0\n'
        b'gateway_lifecycle_state{pid="4242",state="failed"} 0.0\n'
    )
    out = redact_metrics(body, tmp_path)
    assert b"4242" not in out and b"4343" not in out
    lines = out.splitlines()
    pids = [line.split(b'pid="')[1].split(b'"')[0] for line in lines]
    assert pids[0] == pids[2] != pids[1]  # same process, same pseudonym; others differ
    assert redact_metrics(body, tmp_path) == out  # stable across scrapes
    assert redact_metrics(body, None) == body  # one process: there is no pid label


async def test_redaction_survives_a_busy_log(gateway: tuple[httpx.AsyncClient, Path]) -> None:
    """Paging (``since``/``limit``) works the same in both views."""
    client, _ = gateway
    full = (await client.get("/_lifecycle?since=2&limit=3", headers=bearer(READ_KEY))).json()
    redacted = (await client.get("/_lifecycle?since=2&limit=3")).json()
    assert [e["seq"] for e in full["events"]] == [e["seq"] for e in redacted["events"]] == [2, 3, 4]
