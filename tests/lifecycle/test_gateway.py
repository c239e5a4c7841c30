"""The gateway's phases in-process: nesting, unwinding in reverse, failure and drain paths."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from anyio.lowlevel import checkpoint

from routeiq.app import GatewayApp
from routeiq.assembly.gateway import Gateway
from routeiq.errors import StartupError
from routeiq.lifecycle.events import EventKind
from routeiq.lifecycle.phases import StartupAborted
from tests.support import hooks
from tests.support.asgi import LifespanDriver, running_app

pytestmark = pytest.mark.anyio

PHASES = ("configure", "observe", "patch", "serve")
MODEL = {
    "model_name": "m",
    "litellm_params": {"model": "openai/m", "mock_response": "hi", "api_key": "sk-up-123"},
}


def write_config(tmp_path: Path, routeiq: dict[str, Any] | None = None, **sections: Any) -> Path:
    data: dict[str, Any] = {"model_list": [MODEL], **sections}
    if routeiq is not None:
        data["routeiq"] = routeiq
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def recording_hooks(*, fail_in: str | None = None) -> list[dict[str, str]]:
    specs = [{"phase": p, "call": "tests.support.hooks:record", "name": p} for p in PHASES]
    if fail_in is not None:
        specs.append({"phase": fail_in, "call": "tests.support.hooks:fail", "name": "boom"})
    return specs


def transitions(gateway: Gateway) -> list[str]:
    return [
        f"{e.from_state}->{e.to_state}"
        for e in gateway.events.events
        if e.kind == EventKind.TRANSITION
    ]


def teardowns(gateway: Gateway) -> list[str]:
    return [str(e.component) for e in gateway.events.events if e.kind == EventKind.TEARDOWN]


async def test_startup_reaches_serving_in_order_and_stops(tmp_path: Path) -> None:
    app = GatewayApp(env={}, config_path=write_config(tmp_path, {"hooks": recording_hooks()}))
    async with running_app(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.get("/health/live")).status_code == 200
        body = (await client.get("/_lifecycle")).json()
        assert body["state"] == "serving"
        assert body["leadership"]["state"] == "leader"
        assert body["leadership"]["backend"] == "local"
        assert body["leadership"]["fencing_token"] >= 1
        startup = (await client.get("/_lifecycle/startup")).json()
    gateway = app.gateway
    assert gateway is not None
    assert transitions(gateway) == [
        "created->configured",
        "configured->observing",
        "observing->patched",
        "patched->serving",
        "serving->draining",
        "draining->stopped",
    ]
    assert [p["name"] for p in startup["phases"]] == list(PHASES)
    components = {c["name"]: c for c in startup["components"]}
    for name in ("config", "metrics", "logging", "tracing", "litellm", "router"):
        assert components[name]["ok"] and components[name]["duration_s"] >= 0
    assert components["router"]["parent"] == "patch"
    assert startup["total_s"] > 0
    assert [
        *(f"enter:hook:{p}" for p in PHASES),
        *(f"exit:hook:{p}" for p in reversed(PHASES)),
    ] == hooks.RECORD
    assert teardowns(gateway) == [
        "supervisor",
        "hook:serve",
        "hook:patch",
        "mcp_registry",
        "http_client",
        "router",
        "hook:observe",
        "tracing",
        "logging",
        "metrics",
        "hook:configure",
    ]


@pytest.mark.parametrize("phase", PHASES)
async def test_failure_in_any_phase_unwinds_exactly_what_started(
    tmp_path: Path, phase: str
) -> None:
    app = GatewayApp(
        env={},
        config_path=write_config(tmp_path, {"hooks": recording_hooks(fail_in=phase)}),
        exit_on_startup_failure=False,
    )
    driver = LifespanDriver(app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.run)
        reply = await driver.startup()
    driver.close()
    assert reply["type"] == "lifespan.startup.failed"
    assert f"injected failure in phase {phase}" in reply["message"]
    gateway = app.gateway
    assert gateway is not None
    status = gateway.status()
    assert status.state == "failed" and not status.live and not status.ready
    assert status.failed_phase == phase
    assert status.error is not None and "injected failure" in status.error
    started = list(PHASES[: PHASES.index(phase) + 1])
    assert [
        *(f"enter:hook:{p}" for p in started),
        *(f"exit:hook:{p}" for p in reversed(started)),
    ] == hooks.RECORD
    failed = [e for e in gateway.events.events if e.kind == EventKind.COMPONENT and not e.ok]
    assert [e.component for e in failed] == ["hook:boom"]
    assert transitions(gateway)[-1].endswith("->failed")
    assert isinstance(app.startup_error, StartupError) and app.startup_error.phase == phase
    assert (
        gateway.metrics is None
        or _sample(gateway, "gateway_startup_failures_total", {"phase": phase}) == 1
    )


async def test_drain_requested_during_startup_unwinds_and_stops(tmp_path: Path) -> None:
    specs = [
        {"phase": "configure", "call": "tests.support.hooks:record", "name": "configure"},
        {"phase": "observe", "call": "tests.support.hooks:record", "name": "observe"},
        {"phase": "patch", "call": "tests.support.hooks:gate", "name": "wait"},
    ]
    gateway = Gateway(env={}, config_path=write_config(tmp_path, {"hooks": specs}))
    result: list[BaseException] = []

    async def run() -> None:
        try:
            await gateway.run()
        except StartupAborted as exc:
            result.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while "gate:patch" not in hooks.RECORD:
            await checkpoint()
        gateway.request_drain()
        assert not gateway.status().ready
    assert len(result) == 1
    # The patch phase's hook was still running, so the gateway drains from `observing`.
    assert transitions(gateway)[-2:] == ["observing->draining", "draining->stopped"]
    assert teardowns(gateway) == [
        "supervisor",
        "mcp_registry",
        "http_client",
        "router",
        "hook:observe",
        "tracing",
        "logging",
        "metrics",
        "hook:configure",
    ]
    assert hooks.RECORD == [
        "enter:hook:configure",
        "enter:hook:observe",
        "gate:patch",
        "exit:hook:observe",
        "exit:hook:configure",
    ]
    cancelled = [e for e in gateway.events.events if e.kind == EventKind.COMPONENT and not e.ok]
    assert [(e.component, e.error) for e in cancelled] == [("hook:wait", "cancelled")]


async def test_two_apps_in_one_process_do_not_interfere(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config_a = tmp_path / "a" / "c.yaml"
    config_b = tmp_path / "b" / "c.yaml"
    config_a.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": "alpha",
                        "litellm_params": {
                            "model": "openai/a",
                            "mock_response": "from A",
                            "api_key": "k",
                        },
                    }
                ],
                "routeiq": {"master_key": "key-a"},
            }
        )
    )
    config_b.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": "beta",
                        "litellm_params": {
                            "model": "openai/b",
                            "mock_response": "from B",
                            "api_key": "k",
                        },
                    }
                ],
                "routeiq": {"master_key": "key-b"},
            }
        )
    )
    app_a, app_b = (
        GatewayApp(env={}, config_path=config_a),
        GatewayApp(env={}, config_path=config_b),
    )
    async with running_app(app_a) as a, running_app(app_b) as b:
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        ra = await a.post(
            "/v1/chat/completions",
            json={"model": "alpha", **chat},
            headers={"authorization": "Bearer key-a"},
        )
        rb = await b.post(
            "/v1/chat/completions",
            json={"model": "beta", **chat},
            headers={"authorization": "Bearer key-b"},
        )
        assert ra.status_code == 200, ra.text
        assert ra.json()["choices"][0]["message"]["content"] == "from A"
        assert rb.json()["choices"][0]["message"]["content"] == "from B"
        # Each app knows only its own models and keys.
        cross = await a.post(
            "/v1/chat/completions",
            json={"model": "beta", **chat},
            headers={"authorization": "Bearer key-a"},
        )
        assert cross.status_code == 404
        wrong_key = await b.post(
            "/v1/chat/completions",
            json={"model": "beta", **chat},
            headers={"authorization": "Bearer key-a"},
        )
        assert wrong_key.status_code == 401
        assert app_a.gateway is not None and app_b.gateway is not None
        assert app_a.gateway.router is not app_b.gateway.router
        assert app_a.gateway.metrics is not None and app_b.gateway.metrics is not None
        assert app_a.gateway.metrics.registry is not app_b.gateway.metrics.registry
        metrics_a = (await a.get("/metrics")).text
        assert 'model="alpha"' in metrics_a and 'model="beta"' not in metrics_a


async def test_no_task_or_thread_left_after_shutdown(tmp_path: Path) -> None:
    specs = [{"name": "steady", "call": "tests.support.hooks:steady_service"}]
    threads_before = set(threading.enumerate())
    tasks_before = asyncio.all_tasks()
    app = GatewayApp(env={}, config_path=write_config(tmp_path, {"services": specs}))
    async with running_app(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
        assert "service-start:steady" in hooks.RECORD
        assert len(asyncio.all_tasks()) > len(tasks_before)
    assert "service-stop:steady" in hooks.RECORD
    assert asyncio.all_tasks() == tasks_before
    leftover = set(threading.enumerate()) - threads_before
    assert {thread for thread in leftover if not _idle_anyio_worker(thread)} == set()


def _idle_anyio_worker(thread: threading.Thread) -> bool:
    """One of anyio's worker threads, idle in its pool (the config watcher reads the file in
    one). anyio keeps those for reuse and stops them when the event loop's root task ends; a
    new one appears when two reads overlap. A worker still running a job is not idle."""
    idle = getattr(thread, "idle_workers", None)
    return type(thread).__name__ == "WorkerThread" and idle is not None and thread in idle


async def test_services_that_exceed_restart_intensity_fail_the_gateway(tmp_path: Path) -> None:
    routeiq = {
        "services": [
            {
                "name": "flaky",
                "call": "tests.support.hooks:crashing_service",
                "restart": "permanent",
            }
        ],
        "supervisor": {
            "max_restarts": 3,
            "window_s": 60,
            "backoff_initial_s": 0,
            "backoff_max_s": 0,
        },
    }
    app = GatewayApp(env={}, config_path=write_config(tmp_path, routeiq))
    async with running_app(app) as client:
        gateway = app.gateway
        assert gateway is not None
        with anyio.fail_after(10):
            while gateway.state != "failed":
                await anyio.sleep(0.01)
        live = await client.get("/health/live")
        assert live.status_code == 503
        assert "restart intensity" in live.json()["error"]
        assert (await client.get("/health/ready")).status_code == 503
        assert gateway.status().failed_phase == "supervisor"
        assert _sample(gateway, "gateway_service_restarts_total", {"service": "flaky"}) == 3
        assert _sample(gateway, "gateway_service_crashes_total", {"service": "flaky"}) == 4
    service_events = [e.trigger for e in gateway.events.events if e.kind == EventKind.SERVICE]
    assert service_events.count("restarting") == 3
    assert service_events[-1] == "gave_up"


async def test_startup_error_is_raised_from_run(tmp_path: Path) -> None:
    gateway = Gateway(env={}, config_path=tmp_path / "missing.yaml")
    with pytest.raises(StartupError) as info:
        await gateway.run()
    assert info.value.phase == "configure"
    assert "file not found" in str(info.value)
    assert gateway.state == "failed"


def _sample(gateway: Gateway, name: str, labels: dict[str, str]) -> float | None:
    assert gateway.metrics is not None
    return gateway.metrics.registry.get_sample_value(name, labels)


ETCD_PASSWORD = "etcd-root-pw-8f2c1e"


async def test_a_password_given_by_env_never_shows_in_events_logs_or_errors(
    tmp_path: Path,
) -> None:
    """``ROUTEIQ_ETCD_PASSWORD`` is a literal secret like any other: a hook that fails with it
    in its message shows ``***`` in the event, the JSONL log and the startup error."""
    config = tmp_path / "c.yaml"
    hook = {"phase": "patch", "call": "tests.support.hooks:fail_with_etcd_password"}
    model = {"model_name": "m", "litellm_params": {"model": "openai/m", "mock_response": "x"}}
    config.write_text(yaml.safe_dump({"model_list": [model], "routeiq": {"hooks": [hook]}}))
    log = tmp_path / "events.jsonl"
    env = {
        "ROUTEIQ_ETCD_USER": "gateway",
        "ROUTEIQ_ETCD_PASSWORD": ETCD_PASSWORD,
        "ROUTEIQ_EVENT_LOG": str(log),
    }
    gateway = Gateway(env=env, config_path=config)
    with pytest.raises(StartupError) as raised:
        await gateway.run()
    error = str(raised.value)
    assert "injected failure in phase patch (etcd password ***)" in error
    failed = [e for e in gateway.events.events if e.error and "etcd password" in e.error]
    assert failed and all("etcd password ***" in e.error for e in failed if e.error)
    written = log.read_text(encoding="utf-8")
    assert "etcd password ***" in written
    for text in (error, written, *(repr(e.to_dict()) for e in gateway.events.events)):
        assert ETCD_PASSWORD[4:12] not in text
