"""A reload ends in "applied" or "rejected with reasons", whatever the file holds: non-UTF-8
bytes, an alias bomb, a FIFO, a directory, a huge file. A rejection changes neither liveness nor
the running config, is recorded once until the file changes again, and holds no fragment of a
secret (not in the event, the JSONL log, ``/_lifecycle`` nor the admin answer)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from routeiq.app import GatewayApp
from routeiq.assembly.gateway import Gateway
from routeiq.lifecycle.events import EventKind
from tests.config.hostile import ALIAS_BOMB, fragments
from tests.support.asgi import running_app

pytestmark = pytest.mark.anyio

ADMIN = {"authorization": "Bearer admin-secret-1"}
UPSTREAM_KEY = "sk-live-4f9Qx2Lm8ZpR7tWv"  # 24 characters, like the issue's


def config(models: list[str], **params: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {"model": f"openai/{name}", "mock_response": name, **params},
            }
            for name in models
        ],
        "routeiq": {"admin_key": "admin-secret-1"},
    }


def rejections(gateway: Gateway) -> list[str]:
    return [
        e.error or ""
        for e in gateway.events.events
        if e.kind == EventKind.CONFIG and e.trigger == "rejected"
    ]


async def wait_for(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(20):
        while not condition():
            await anyio.sleep(0.02)


def make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def make_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def make_huge(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(50 * 1024 * 1024)


def make_non_utf8(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"model_list", b"model_l\xefst", 1))


def make_alias_bomb(path: Path) -> None:
    path.write_text(ALIAS_BOMB)


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "non-utf8": (
        make_non_utf8,
        "not valid UTF-8: byte 0xef at line 1, column 8 (byte offset 7)",
    ),
    "alias-bomb": (make_alias_bomb, "YAML expands to more than"),
    "fifo": (make_fifo, "is a FIFO, not a regular file"),
    "directory": (make_directory, "is a directory, not a regular file"),
    "50MB": (make_huge, "is larger than 4194304 bytes"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_a_hostile_file_is_rejected_once_and_the_gateway_keeps_serving(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(["alpha"])))
    app = GatewayApp(env={}, config_path=path)
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None and gateway.runtime is not None
        damage, expected = HOSTILE[kind]
        damage(path)
        await wait_for(lambda: len(rejections(gateway)) == 1)
        assert expected in rejections(gateway)[0]
        # The watcher keeps polling the same bad file: no second rejection, no crash.
        restarts_before = [e for e in gateway.events.events if e.kind == EventKind.SERVICE]
        forced = await client.post("/_admin/reload", headers=ADMIN)
        assert forced.status_code == 422, forced.text
        assert expected in forced.json()["error"]
        assert len(rejections(gateway)) == 2  # the forced one, recorded
        services_after = [e for e in gateway.events.events if e.kind == EventKind.SERVICE]
        assert services_after == restarts_before  # config-sync never crashed or restarted
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200
        assert gateway.runtime.revision == 1
        reply = await client.post(
            "/v1/chat/completions", json={"model": "alpha", "messages": [{"role": "user"}]}
        )
        assert reply.status_code == 200
        # Fixed: picked up on the next poll.
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
        path.write_text(yaml.safe_dump(config(["alpha", "beta"])))
        await wait_for(lambda: gateway.runtime is not None and gateway.runtime.revision == 2)
        assert len(rejections(gateway)) == 2
        assert (await client.get("/health/live")).status_code == 200


async def test_a_rejected_reload_leaks_no_fragment_of_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    events_file = tmp_path / "events.jsonl"
    good = config(["alpha"], api_key="os.environ/UPSTREAM_KEY")
    good["routeiq"]["event_log"] = {"path": str(events_file)}
    path.write_text(yaml.safe_dump(good, sort_keys=False))
    env = {"UPSTREAM_KEY": UPSTREAM_KEY}
    app = GatewayApp(env=env, config_path=path)
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None
        # The case: a bad value just before the key in the same deployment, and the
        # key also written literally (as a new user would) under a secret-sounding name.
        bad = config(["alpha"])
        params = bad["model_list"][0]["litellm_params"]
        params.update({"max_retries": "x", "api_key": UPSTREAM_KEY})
        bad["routeiq"]["event_log"] = {"path": str(events_file)}
        bad["routeiq"]["drain"] = {"delay_s": UPSTREAM_KEY}
        path.write_text(yaml.safe_dump(bad, sort_keys=False))
        await wait_for(lambda: len(rejections(gateway)) == 1)
        forced = await client.post("/_admin/reload", headers=ADMIN)
        assert forced.status_code == 422
        lifecycle = await client.get("/_lifecycle")
        # A rejection by litellm's Router (the schema is fine, litellm is not).
        bad["routeiq"].pop("drain")
        path.write_text(yaml.safe_dump(bad, sort_keys=False))
        await wait_for(lambda: len(rejections(gateway)) == 3)
        lifecycle_2 = await client.get("/_lifecycle")
    errors = rejections(gateway)
    assert "routeiq.drain.delay_s: Input should be a valid number" in errors[0]
    assert "model_list[0].litellm_params: invalid literal for int()" in errors[2]
    surfaces = {
        "events": "\n".join(errors),
        "admin answer": forced.text,
        "/_lifecycle": lifecycle.text + lifecycle_2.text,
        "jsonl": events_file.read_text(),
    }
    for where, text in surfaces.items():
        leaked = [f for f in fragments(UPSTREAM_KEY) if f in text]
        assert not leaked, f"{where} holds fragments of the key: {leaked[:3]}"
    assert json.loads(forced.text)["result"] == "rejected"


async def test_startup_reads_the_config_the_same_way(tmp_path: Path) -> None:
    """hypercorn's lifespan path: a hostile file fails startup with the loader's message."""
    from routeiq.errors import ConfigError, StartupError
    from tests.support.asgi import LifespanDriver

    path = tmp_path / "c.yaml"
    path.write_bytes(b"model_list: caf\xe9\n")
    app = GatewayApp(env={}, config_path=path, exit_on_startup_failure=False)
    driver = LifespanDriver(app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.run)
        reply = await driver.startup()
    driver.close()
    assert reply["type"] == "lifespan.startup.failed"
    error = app.startup_error
    assert isinstance(error, StartupError) and isinstance(error.cause, ConfigError)
    assert error.cause.render() == (
        f"invalid configuration in {path}:\n"
        "  not valid UTF-8: byte 0xe9 at line 1, column 16 (byte offset 15); save the file as UTF-8"
    )
    assert app.gateway is not None and app.gateway.state == "failed"


async def test_a_litellm_config_starts_with_one_warning_per_ignored_key(tmp_path: Path) -> None:
    data = config(["alpha"])
    data["router_settings"] = {"redis_host": "os.environ/REDIS_HOST", "num_retries": 1}
    data["litellm_settings"] = {"callbacks": ["prometheus"], "drop_params": True}
    data["general_settings"] = {"database_url": "os.environ/DATABASE_URL", "alerting": ["slack"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    app = GatewayApp(env={}, config_path=path)
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None
        lifecycle = (await client.get("/_lifecycle")).json()
        # A reload of the same kind of config warns again, for what it ignores.
        data["general_settings"] = {"store_model_in_db": True}
        path.write_text(yaml.safe_dump(data))
        await wait_for(lambda: gateway.runtime is not None and gateway.runtime.revision == 2)
    warnings = [
        str(e.attributes["message"]).split(": ", 1)[0]
        for e in gateway.events.events
        if e.kind == EventKind.WARNING and e.component == "config"
    ]
    assert warnings == [
        "router_settings.redis_host",
        "litellm_settings.callbacks",
        "general_settings.alerting",
        "general_settings.database_url",
        "router_settings.redis_host",
        "litellm_settings.callbacks",
        "general_settings.store_model_in_db",
    ]
    assert lifecycle["state"] == "serving"
