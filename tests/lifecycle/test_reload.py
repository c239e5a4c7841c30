"""Hot reload with the local backend, in-process: file watch, admin reload, rejections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from routeiq.app import GatewayApp
from routeiq.assembly.gateway import Gateway
from routeiq.lifecycle.events import EventKind
from tests.support.asgi import running_app

pytestmark = pytest.mark.anyio

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def model(name: str, reply: str) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {"model": f"openai/{name}", "mock_response": reply, "api_key": "k"},
    }


def write(path: Path, models: list[dict[str, Any]], **routeiq: Any) -> None:
    data = {"model_list": models, "routeiq": {"admin_key": "admin-secret-1", **routeiq}}
    path.write_text(yaml.safe_dump(data))


async def wait_revision(gateway: Gateway, revision: int) -> None:
    with anyio.fail_after(10):
        while gateway.runtime is None or gateway.runtime.revision < revision:
            await anyio.sleep(0.02)


def config_events(gateway: Gateway) -> list[tuple[str | None, Any]]:
    return [
        (e.trigger, e.attributes.get("revision"))
        for e in gateway.events.events
        if e.kind == EventKind.CONFIG
    ]


def sample(gateway: Gateway, name: str, labels: dict[str, str] | None = None) -> float | None:
    assert gateway.metrics is not None
    return gateway.metrics.registry.get_sample_value(name, labels or {})


async def chat(client: httpx.AsyncClient, name: str) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": name, **CHAT})


async def test_file_change_hot_swaps_and_invalid_change_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    write(path, [model("alpha", "from alpha")])
    app = GatewayApp(env={}, config_path=path)
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None and gateway.runtime is not None
        old_router = gateway.runtime.router
        assert (await chat(client, "alpha")).status_code == 200
        write(path, [model("alpha", "from alpha"), model("beta", "from beta")])
        await wait_revision(gateway, 2)
        assert gateway.runtime.router is not old_router
        reply = await chat(client, "beta")
        assert reply.json()["choices"][0]["message"]["content"] == "from beta"
        assert sample(gateway, "gateway_config_revision") == 2
        # An invalid change: rejected, the old config keeps serving, the revision stays.
        path.write_text("model_list: []\n")
        with anyio.fail_after(10):
            # Created at 0 when the gateway starts: wait for the rejection to count.
            while not sample(gateway, "gateway_config_reloads_total", {"result": "rejected"}):
                await anyio.sleep(0.02)
        assert gateway.runtime.revision == 2
        assert (await chat(client, "beta")).status_code == 200
        assert sample(gateway, "gateway_config_revision") == 2
        assert config_events(gateway) == [("loaded", 1), ("applied", 2), ("rejected", 2)]
        rejected = [e for e in gateway.events.events if e.kind == EventKind.CONFIG and not e.ok]
        assert (
            rejected[0].error is not None and "model_list: must not be empty" in rejected[0].error
        )


async def test_restart_only_settings_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    write(path, [model("alpha", "a")])
    app = GatewayApp(env={}, config_path=path)
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None
        write(path, [model("alpha", "a")], drain={"delay_s": 9})
        response = await client.post(
            "/_admin/reload", headers={"authorization": "Bearer admin-secret-1"}
        )
        assert response.status_code == 422
        assert "routeiq.drain: cannot change while running" in response.json()["error"]
        assert gateway.runtime is not None and gateway.runtime.revision == 1


async def test_admin_reload_needs_the_admin_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    write(path, [model("alpha", "a")])
    app = GatewayApp(env={}, config_path=path)
    async with running_app(app) as client:
        assert (await client.post("/_admin/reload")).status_code == 401
        wrong = await client.post("/_admin/reload", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        same = await client.post(
            "/_admin/reload", headers={"authorization": "Bearer admin-secret-1"}
        )
        assert same.status_code == 200 and same.json()["result"] == "unchanged"
        write(path, [model("gamma", "g")])
        applied = await client.post(
            "/_admin/reload", headers={"authorization": "Bearer admin-secret-1"}
        )
        assert applied.status_code == 200, applied.text
        assert applied.json()["result"] == "applied" and applied.json()["revision"] == 2
        assert (await chat(client, "gamma")).status_code == 200
        assert (await chat(client, "alpha")).status_code == 404


async def test_admin_routes_refuse_without_an_admin_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model_list": [model("alpha", "a")]}))
    app = GatewayApp(env={}, config_path=path)
    async with running_app(app) as client:
        response = await client.post("/_admin/reload", headers={"authorization": "Bearer anything"})
        assert response.status_code == 403
        assert "admin routes are disabled" in response.json()["error"]


async def test_in_flight_request_finishes_on_the_old_router(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    slow = model("alpha", "old reply")
    slow["litellm_params"]["mock_delay"] = 0.5
    write(path, [slow])
    app = GatewayApp(env={}, config_path=path)
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None
        results: list[httpx.Response] = []

        async def slow_call() -> None:
            results.append(await chat(client, "alpha"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            with anyio.fail_after(5):
                while sample(gateway, "gateway_inflight_requests") != 1:
                    await anyio.sleep(0.01)
            write(path, [model("alpha", "new reply")])
            await wait_revision(gateway, 2)
        assert results[0].json()["choices"][0]["message"]["content"] == "old reply"
        fresh = await chat(client, "alpha")
        assert fresh.json()["choices"][0]["message"]["content"] == "new reply"
