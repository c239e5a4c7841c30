"""The ``routeiq`` command, in-process through ``main`` and once as the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from routeiq.cli import main
from routeiq.lifecycle.clock import ManualClock
from routeiq.lifecycle.events import EventLog, JsonlSink
from routeiq.lifecycle.projections import LifecycleProjection, StartupTimeline
from routeiq.lifecycle.statechart import Statechart
from tests.support.eventlog import ScriptedRun

REPO = Path(__file__).resolve().parents[1]
GOOD = {
    "model_list": [
        {
            "model_name": "fast",
            "litellm_params": {"model": "openai/fast", "api_key": "os.environ/CLI_TEST_KEY"},
        },
        {"model_name": "fast", "litellm_params": {"model": "openai/fast-2"}},
        {"model_name": "smart", "litellm_params": {"model": "openai/smart"}},
    ]
}
BAD = {
    "model_list": [{"model_name": "m", "litellm_params": {}}],
    "bogus": 1,
    "routeiq": {"log_level": "loud"},
}
BAD_ERRORS = [
    "  bogus: unknown field",
    "  model_list[0].litellm_params.model: Field required",
    "  routeiq.log_level: Input should be 'debug', 'info', 'warning' or 'error'",
]


@pytest.fixture(autouse=True)
def _no_routeiq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ROUTEIQ_") or name.startswith("OTEL_EXPORTER_OTLP_"):
            monkeypatch.delenv(name)


def write_yaml(tmp_path: Path, data: Any, name: str) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --- check ---


def test_check_good_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLI_TEST_KEY", "sk-cli")
    path = write_yaml(tmp_path, GOOD, "good.yaml")
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: {path} (3 deployments, models: fast, smart)\n"
    assert err == ""


def test_check_bad_file_prints_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tmp_path, BAD, "bad.yaml")
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"invalid configuration in {path}:", *BAD_ERRORS]


def test_check_reports_a_missing_secret_from_the_process_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CLI_TEST_KEY", raising=False)
    path = write_yaml(tmp_path, GOOD, "good.yaml")
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"invalid configuration in {path}:",
        "  model_list[0].litellm_params.api_key: environment variable CLI_TEST_KEY is not set",
    ]


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert main(["check", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_check_bad_file_as_the_installed_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("routeiq")
    assert script.is_file(), (
        f"{script} is missing: install the package into the venv (`pip install -e .`)"
    )
    path = write_yaml(tmp_path, BAD, "bad.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEIQ_")}
    done = subprocess.run(
        [str(script), "check", str(path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"invalid configuration in {path}:", *BAD_ERRORS]
    assert done.stdout == ""


# --- statechart and usage ---


def test_statechart_prints_the_committed_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["statechart"]) == 0
    out, err = capsys.readouterr()
    assert out == (REPO / "statecharts" / "gateway.mmd").read_text(encoding="utf-8")
    assert err == ""


def test_statechart_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["statechart", "nonexistent"]) == 2
    assert capsys.readouterr().err == "routeiq: no statechart named 'nonexistent'\n"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert capsys.readouterr().out.startswith("usage: routeiq ")


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check"])
    assert caught.value.code == 2
    assert "the following arguments are required: file" in capsys.readouterr().err


# --- events replay ---


class Recording(ScriptedRun):
    """A real ``EventLog`` + ``JsonlSink`` fed by the gateway chart's own ``StateMachine``."""

    def __init__(self, path: Path, *, worker_id: str = "w1", pid: int = 111) -> None:
        self.chart = Statechart.load("gateway")
        clock = ManualClock()
        log = EventLog(clock, worker_id=worker_id, pid=pid)
        self.state, self.timeline = LifecycleProjection(self.chart), StartupTimeline()
        log.subscribe(self.state)
        log.subscribe(self.timeline)
        self.sink = JsonlSink(path)
        log.subscribe(self.sink)
        super().__init__(self.chart, log, clock)

    def close(self) -> None:
        self.sink.close()


def record_happy(path: Path, **ids: Any) -> Recording:
    rec = Recording(path, **ids)
    rec.component("config", 0.25)
    rec.fire("configure")
    rec.component("metrics", 0.5)
    rec.component("tracing", 0.125)
    rec.fire("observe")
    rec.component("router", 1.0)
    rec.fire("patch")
    rec.fire("serve", after=0.5)
    rec.fire("drain", after=10.0)
    rec.fire("stop", after=0.25)
    rec.close()
    return rec


def record_failure(path: Path, **ids: Any) -> Recording:
    rec = Recording(path, **ids)
    rec.component("config", 0.25)
    rec.fire("configure")
    rec.component("metrics", 0.5)
    rec.fire("observe")
    rec.component("router", 0.75, error="RuntimeError: boom")
    rec.fire("fail", error="RuntimeError: boom", phase="patch")
    rec.close()
    return rec


HAPPY_TEXT = """\
worker w1 (pid 111): final state stopped
  startup: serving in 2.375s
    configure       250.0 ms
      config                        250.0 ms
    observe         625.0 ms
      metrics                       500.0 ms
      tracing                       125.0 ms
    patch          1000.0 ms
      router                       1000.0 ms
    serve           500.0 ms
"""

FAILURE_TEXT = """\
worker w1 (pid 222): final state failed
  failed in phase patch: RuntimeError: boom
  startup: failed in 1.500s
    configure       250.0 ms
      config                        250.0 ms
    observe         500.0 ms
      metrics                       500.0 ms
    patch           750.0 ms  (failed)
      router                        750.0 ms  error: RuntimeError: boom
"""


def test_replay_prints_final_state_and_startup_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    record_happy(path)
    assert main(["events", "replay", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == HAPPY_TEXT
    assert err == ""


def test_replay_of_a_failed_startup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl"
    record_failure(path, pid=222)
    assert main(["events", "replay", str(path)]) == 0
    assert capsys.readouterr().out == FAILURE_TEXT


def test_replay_json_matches_the_live_projections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    rec = record_happy(path)
    assert main(["events", "replay", "--json", str(path)]) == 0
    status = rec.state.status()
    assert json.loads(capsys.readouterr().out) == [
        {
            "worker_id": "w1",
            "pid": 111,
            "state": status.state,
            "failed_phase": status.failed_phase,
            "error": status.error,
            "startup": rec.timeline.to_dict(),
        }
    ]
    assert status.state == "stopped"
    assert rec.timeline.to_dict()["total_s"] == 2.375


def test_replay_prints_every_run_in_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    first = record_failure(path, pid=222)
    second = record_happy(path, pid=222)  # the same worker restarted: seq starts again at 0
    assert main(["events", "replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert out == FAILURE_TEXT + HAPPY_TEXT.replace("pid 111", "pid 222")
    assert main(["events", "replay", "--json", str(path)]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(r["worker_id"], r["pid"], r["state"], r["failed_phase"]) for r in runs] == [
        ("w1", 222, "failed", "patch"),
        ("w1", 222, "stopped", None),
    ]
    assert [r["startup"] for r in runs] == [first.timeline.to_dict(), second.timeline.to_dict()]


IMPOSSIBLE = "routeiq: impossible event sequence for worker w1 (pid 111):"


def edit_lines(path: Path, edit: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    if edit == "configured->serving":
        event = json.loads(lines[5])  # the transition that entered `observing`
        assert (event["from_state"], event["to_state"]) == ("configured", "observing")
        event.update(trigger="serve", to_state="serving")
        lines[5] = json.dumps(event)
    elif edit == "seq gap":
        del lines[3]
    elif edit == "malformed line":
        lines[3] = lines[3][:40]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            "configured->serving",
            f"{IMPOSSIBLE} gateway: trigger 'serve' is not allowed in state 'configured'; "
            "allowed from 'configured': observe, drain, fail",
        ),
        (
            "seq gap",
            f"{IMPOSSIBLE} event seq 4 out of order: expected 3",
        ),
        ("malformed line", "routeiq: unreadable event log: {path}:4: "),
    ],
)
def test_replay_rejects_an_impossible_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str, message: str
) -> None:
    path = tmp_path / "events.jsonl"
    record_happy(path)
    edit_lines(path, edit)
    assert main(["events", "replay", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message.format(path=path))
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_replay_of_an_empty_or_missing_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert main(["events", "replay", str(empty)]) == 2
    assert capsys.readouterr().err == f"routeiq: {empty} holds no events\n"
    missing = tmp_path / "missing.jsonl"
    assert main(["events", "replay", str(missing)]) == 2
    assert capsys.readouterr().err == f"routeiq: no such event log: {missing}\n"


# --- hostile config files: check and serve share the loader and its messages ---


def _hostile(tmp_path: Path, kind: str) -> tuple[Path, str]:
    from tests.config.hostile import ALIAS_BOMB

    path = tmp_path / "hostile.yaml"
    if kind == "non-utf8":
        path.write_bytes(b'model_list: []\nrouteiq: {log_level: "caf\xe9"}\n')
        return path, "not valid UTF-8: byte 0xe9 at line 2, column 26 (byte offset 40)"
    if kind == "alias-bomb":
        path.write_text(ALIAS_BOMB)
        return path, "YAML expands to more than 200000 nodes"
    if kind == "directory":
        path.mkdir()
        return path, "is a directory, not a regular file"
    if kind == "fifo":
        os.mkfifo(path)
        return path, "is a FIFO, not a regular file"
    with path.open("wb") as f:
        f.truncate(50 * 1024 * 1024)
    return path, "is larger than 4194304 bytes"


HOSTILE_KINDS = ["non-utf8", "alias-bomb", "directory", "fifo", "50MB"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", HOSTILE_KINDS)
@pytest.mark.parametrize("command", ["check", "serve"])
def test_hostile_config_exits_2_with_one_readable_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    path, expected = _hostile(tmp_path, kind)
    args = ["check", str(path)] if command == "check" else ["serve", "--config", str(path)]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert expected in err
    assert "Traceback" not in err
    head = "invalid configuration in" if command == "check" else "routeiq: invalid configuration"
    assert err.startswith(head)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["check", "serve"])
def test_non_utf8_config_as_the_installed_script(tmp_path: Path, command: str) -> None:
    path, expected = _hostile(tmp_path, "non-utf8")
    script = Path(sys.executable).with_name("routeiq")
    args = ["check", str(path)] if command == "check" else ["serve", "--config", str(path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEIQ_")}
    done = subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=50)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


# --- check knows what serve knows ---


def test_check_reports_what_serve_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data: dict[str, Any] = {
        "model_list": [
            {
                "model_name": "a",
                "litellm_params": {"model": "openai/a", "api_base": "https://…/v1"},
            },
            {"model_name": "b", "litellm_params": {"model": "openai/b", "api_base": "localhost"}},
        ],
        "router_settings": {"fallbacks": [{"a": ["b", "ghost"]}], "default_fallbacks": ["nope"]},
        "routeiq": {
            "hooks": [{"phase": "patch", "call": "no_such_pkg.hooks:warm"}],
            "services": [{"name": "s", "call": "tests.support.hooks:missing_attr"}],
            "routing": {"strategy": "no-such-strategy"},
        },
    }
    path = write_yaml(tmp_path, data, "c.yaml")
    assert main(["check", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"invalid configuration in {path}:"
    by_path = {line.strip().split(": ", 1)[0]: line.strip().split(": ", 1)[1] for line in lines[1:]}
    assert by_path["model_list[0].litellm_params.api_base"].endswith(
        "the host has non-ASCII characters (use its punycode form)"
    )
    assert by_path["model_list[1].litellm_params.api_base"].endswith(
        "the scheme is not http or https"
    )
    assert by_path["router_settings.fallbacks[0].a[1]"] == "names no model in model_list: 'ghost'"
    assert by_path["router_settings.default_fallbacks[0]"] == (
        "names no model in model_list: 'nope'"
    )
    # The schema is fine now: the next check finds what serve's later phases would.
    data["model_list"][0]["litellm_params"]["api_base"] = "https://api.example.com/v1"
    data["model_list"][1]["litellm_params"]["api_base"] = "http://127.0.0.1:9/v1"
    data["router_settings"] = {"fallbacks": [{"a": ["b"]}]}
    path = write_yaml(tmp_path, data, "c.yaml")
    assert main(["check", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()[1:]
    assert lines[0].startswith("  routeiq.hooks[0].call: cannot import module 'no_such_pkg.hooks'")
    assert lines[1] == "  routeiq.routing.strategy: unknown strategy 'no-such-strategy'" or (
        lines[1].startswith("  routeiq.routing")
    )
    assert lines[-1] == (
        "  routeiq.services[0].call: 'tests.support.hooks' has no attribute 'missing_attr'"
    )


def test_check_warns_about_ignored_litellm_keys_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
        "router_settings": {"redis_host": "os.environ/REDIS_HOST_UNSET", "num_retries": 1},
        "litellm_settings": {"success_callback": ["prometheus", "langfuse"], "drop_params": True},
        "general_settings": {"database_url": "os.environ/DATABASE_URL_UNSET"},
    }
    path = write_yaml(tmp_path, data, "litellm.yaml")
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"OK: {path} (1 deployments")
    warnings = err.splitlines()
    assert [w.split(": ", 2)[1] for w in warnings] == [
        "router_settings.redis_host",
        "litellm_settings.success_callback",
        "general_settings.database_url",
    ]
    assert all(w.startswith("warning: ") and "not supported, ignored: " in w for w in warnings)
    assert "prometheus -> GET /metrics" in warnings[1]
    assert main(["check", "--strict", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"invalid configuration in {path}:"
    assert len(err.splitlines()) == 4


ETCD_CONFIG: dict[str, Any] = {
    "model_list": [
        {
            "model_name": "a",
            "litellm_params": {"model": "openai/a", "api_key": "sk-literal-cli-0123456789"},
        },
        {
            "model_name": "b",
            "litellm_params": {"model": "openai/b", "api_key": "os.environ/CLI_TEST_KEY"},
        },
    ],
    "routeiq": {
        "leadership": {
            "backend": "etcd",
            "etcd_user": "gateway",
            "etcd_password": "etcd-literal-pw-42",
        }
    },
}


def test_check_with_the_etcd_backend_refuses_literal_secrets_by_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TEST_KEY", "sk-from-env-abcdef")
    path = write_yaml(tmp_path, ETCD_CONFIG, "etcd.yaml")
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    hint = "a literal secret cannot be published to etcd: write os.environ/NAME instead"
    assert err.splitlines()[0] == f"invalid configuration in {path}:"
    problems = [line.strip() for line in err.splitlines()[1:]]
    assert [p.split(": ", 1)[0] for p in problems] == [
        "model_list[0].litellm_params.api_key",
        "routeiq.leadership.etcd_password",
    ]
    assert all(p.split(": ", 1)[1].startswith(hint) for p in problems)
    for fragment in ("literal-cli", "0123456", "literal-pw", "from-env"):
        assert fragment not in err

    # References only (the password from the environment): publishable, so OK.
    data = json.loads(json.dumps(ETCD_CONFIG))
    data["model_list"][0]["litellm_params"]["api_key"] = "os.environ/CLI_TEST_KEY"
    del data["routeiq"]["leadership"]["etcd_password"]
    monkeypatch.setenv("ROUTEIQ_ETCD_PASSWORD", "etcd-from-env-pw")
    path = write_yaml(tmp_path, data, "etcd.yaml")
    assert main(["check", str(path)]) == 0, capsys.readouterr().err

    # The local backend publishes nothing: literal keys are its business.
    data = json.loads(json.dumps(ETCD_CONFIG))
    data["routeiq"]["leadership"] = {"backend": "local"}
    path = write_yaml(tmp_path, data, "local.yaml")
    assert main(["check", str(path)]) == 0, capsys.readouterr().err


def _otlp_installed() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        return False
    return True


def test_check_reports_an_otlp_endpoint_without_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from routeiq.observability.tracing import OTLP_INSTALL_HINT

    monkeypatch.setenv("CLI_TEST_KEY", "sk-from-env-abcdef")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    path = write_yaml(tmp_path, GOOD, "good.yaml")
    if _otlp_installed():
        assert main(["check", str(path)]) == 0
        return
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"invalid configuration in {path}:",
        f"  OTEL_EXPORTER_OTLP_ENDPOINT: is set, but OTLP export needs the otlp extra: "
        f"{OTLP_INSTALL_HINT} (or unset it)",
    ]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")  # set but empty: no export, no problem
    assert main(["check", str(path)]) == 0


# --- basics ---


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from routeiq import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"routeiq {__version__}\n"


def test_python_dash_m_routeiq_is_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "routeiq", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("routeiq ")


def test_version_matches_the_package_metadata() -> None:
    import tomllib

    from routeiq import __version__

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]
