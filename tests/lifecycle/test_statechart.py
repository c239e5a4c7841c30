"""The gateway statechart: DESIGN §1 as data, its Mermaid rendering, its checks, and the
``transitions.Machine`` built from it; and the wheel that ships it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest
import transitions

from routeiq.errors import ConfigError, InvalidTransition
from routeiq.lifecycle.statechart import Statechart, StateMachine, statechart_dir

REPO = Path(__file__).resolve().parents[2]
CHECKOUT_CHARTS = REPO / "statecharts"

STARTUP = ("created", "configured", "observing", "patched", "serving")
DESIGN_STATES = {*STARTUP, "draining", "stopped", "failed"}
TERMINAL = ("stopped", "failed")
NON_TERMINAL = (*STARTUP, "draining")
HAPPY_PATH = [
    ("configure", "created", "configured"),
    ("observe", "configured", "observing"),
    ("patch", "observing", "patched"),
    ("serve", "patched", "serving"),
    ("drain", "serving", "draining"),
    ("stop", "draining", "stopped"),
]
# Every allowed trigger per state, in the chart's order.
ALLOWED = {
    "created": ("configure", "fail"),
    "configured": ("observe", "drain", "fail"),
    "observing": ("patch", "drain", "fail"),
    "patched": ("serve", "drain", "fail"),
    "serving": ("drain", "fail"),
    "draining": ("stop", "fail"),
    "stopped": (),
    "failed": (),
}
TRIGGERS = ("configure", "observe", "patch", "serve", "drain", "stop", "fail")


@pytest.fixture(scope="module")
def chart() -> Statechart:
    return Statechart.load("gateway")


# --- the rendering is not stale ---


@pytest.mark.parametrize("name", ["gateway", "leadership", "master"])
def test_mermaid_rendering_is_current(name: str) -> None:
    committed = (CHECKOUT_CHARTS / f"{name}.mmd").read_text(encoding="utf-8")
    stale = (
        f"statecharts/{name}.mmd is stale: run `routeiq statechart {name} > statecharts/{name}.mmd`"
    )
    assert committed == Statechart.load(name).to_mermaid(), stale
    assert committed == Statechart.from_file(CHECKOUT_CHARTS / f"{name}.yaml").to_mermaid(), stale


def test_every_chart_has_a_rendering() -> None:
    charts = {p.stem for p in CHECKOUT_CHARTS.glob("*.yaml")}
    renderings = {p.stem for p in CHECKOUT_CHARTS.glob("*.mmd")}
    assert charts == renderings


def test_loaded_chart_is_the_checkouts_chart(chart: Statechart) -> None:
    # An editable install copies statecharts/ into site-packages, and statechart_dir() prefers it.
    assert chart == Statechart.from_file(CHECKOUT_CHARTS / "gateway.yaml"), (
        f"Statechart.load reads {statechart_dir()}, which differs from statecharts/gateway.yaml: "
        "reinstall the package (`pip install -e .`)"
    )


def test_mermaid_lists_every_edge_once(chart: Statechart) -> None:
    lines = chart.to_mermaid().splitlines()
    assert lines[:2] == ["stateDiagram-v2", "    [*] --> created"]
    edges = [line.strip() for line in lines[2:] if "[*]" not in line]
    expected = [
        f"{s} --> {chart.target(s, t)}: {t}" for s, triggers in ALLOWED.items() for t in triggers
    ]
    assert sorted(edges) == sorted(expected)
    assert lines[-2:] == ["    stopped --> [*]", "    failed --> [*]"]


# --- DESIGN §1 ---


def test_every_design_state_is_present(chart: Statechart) -> None:
    assert chart.name == "gateway"
    assert set(chart.states) == DESIGN_STATES
    assert len(chart.states) == len(DESIGN_STATES)
    assert chart.initial == "created"
    assert chart.terminal == TERMINAL


@pytest.mark.parametrize("state", sorted(ALLOWED))
def test_allowed_triggers_per_state(chart: Statechart, state: str) -> None:
    assert chart.triggers_from(state) == ALLOWED[state]


@pytest.mark.parametrize("state", NON_TERMINAL)
def test_fail_is_allowed_from_every_non_terminal_state(chart: Statechart, state: str) -> None:
    assert chart.target(state, "fail") == "failed"


def test_drain_only_from_configured_observing_patched_serving(chart: Statechart) -> None:
    assert [s for s in chart.states if "drain" in chart.triggers_from(s)] == [
        "configured",
        "observing",
        "patched",
        "serving",
    ]
    assert {
        chart.target(s, "drain") for s in ("configured", "observing", "patched", "serving")
    } == {"draining"}


@pytest.mark.parametrize("state", TERMINAL)
def test_terminal_states_have_no_exits(chart: Statechart, state: str) -> None:
    assert chart.triggers_from(state) == ()
    assert not any(state in t.sources for t in chart.transitions)
    for trigger in TRIGGERS:
        with pytest.raises(InvalidTransition) as caught:
            chart.target(state, trigger)
        assert caught.value.allowed == ()


def test_happy_path_targets(chart: Statechart) -> None:
    assert [(t, s, chart.target(s, t)) for t, s, _ in HAPPY_PATH] == HAPPY_PATH


# --- StateMachine ---


def test_state_machine_walks_the_happy_path(chart: Statechart) -> None:
    machine = StateMachine(chart)
    assert machine.state == "created"
    assert not machine.terminal
    steps = [(trigger, *machine.fire(trigger)) for trigger, _, _ in HAPPY_PATH]
    assert steps == HAPPY_PATH
    assert machine.state == "stopped"
    assert machine.terminal


def test_trigger_not_allowed_raises_naming_state_trigger_and_allowed(chart: Statechart) -> None:
    machine = StateMachine(chart)
    machine.fire("configure")
    assert not machine.can("serve")
    with pytest.raises(InvalidTransition) as caught:
        machine.fire("serve")
    error = caught.value
    assert (error.chart, error.state, error.trigger, error.allowed) == (
        "gateway",
        "configured",
        "serve",
        ("observe", "drain", "fail"),
    )
    assert str(error) == (
        "gateway: trigger 'serve' is not allowed in state 'configured'; "
        "allowed from 'configured': observe, drain, fail"
    )
    assert machine.state == "configured"


@pytest.mark.parametrize("trigger", [*TRIGGERS, "to_serving", "unknown"])
def test_nothing_leaves_a_terminal_state(chart: Statechart, trigger: str) -> None:
    machine = StateMachine(chart)
    machine.fire("fail")
    with pytest.raises(InvalidTransition) as caught:
        machine.fire(trigger)
    assert (caught.value.state, caught.value.trigger, caught.value.allowed) == (
        "failed",
        trigger,
        (),
    )
    assert str(caught.value) == f"gateway: trigger {trigger!r} is not allowed in state 'failed'"
    assert machine.state == "failed"


# --- bad charts are rejected ---


def chart_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "toy",
        "initial": "a",
        "states": ["a", "b", "done"],
        "terminal": ["done"],
        "transitions": [
            {"trigger": "go", "source": "a", "dest": "b"},
            {"trigger": "finish", "source": ["a", "b"], "dest": "done"},
        ],
    }
    data.update(changes)
    return data


def test_a_valid_toy_chart_loads() -> None:
    toy = Statechart.from_mapping(chart_data())
    assert toy.triggers_from("a") == ("go", "finish")
    assert toy.target("b", "finish") == "done"


@pytest.mark.parametrize(
    ("changes", "problems"),
    [
        (
            {"transitions": [{"trigger": "go", "source": "a", "dest": "nowhere"}]},
            [("transitions[0]", "'nowhere' is not a declared state")],
        ),
        (
            {"transitions": [{"trigger": "go", "source": ["a", "ghost"], "dest": "b"}]},
            [("transitions[0]", "'ghost' is not a declared state")],
        ),
        ({"initial": "zero"}, [("initial", "'zero' is not a declared state")]),
        ({"terminal": ["end"]}, [("terminal", "'end' is not a declared state")]),
        (
            {
                "transitions": [
                    {"trigger": "go", "source": "a", "dest": "b"},
                    {"trigger": "go", "source": ["b", "a"], "dest": "done"},
                ]
            },
            [("transitions[1]", "'go' from 'a' twice")],
        ),
        (
            {"transitions": [{"trigger": "again", "source": "done", "dest": "a"}]},
            [("transitions[0]", "terminal state 'done' has exits")],
        ),
    ],
)
def test_bad_chart_is_rejected(changes: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    with pytest.raises(ConfigError) as caught:
        Statechart.from_mapping(chart_data(**changes))
    assert list(caught.value.problems) == problems
    assert caught.value.source == "statechart 'toy'"


def test_every_problem_of_a_chart_is_reported() -> None:
    data = chart_data(
        initial="zero",
        transitions=[
            {"trigger": "go", "source": "a", "dest": "b"},
            {"trigger": "go", "source": "a", "dest": "limbo"},
            {"trigger": "undo", "source": "done", "dest": "a"},
        ],
    )
    with pytest.raises(ConfigError) as caught:
        Statechart.from_mapping(data)
    assert list(caught.value.problems) == [
        ("initial", "'zero' is not a declared state"),
        ("transitions[1]", "'limbo' is not a declared state"),
        ("transitions[1]", "'go' from 'a' twice"),
        ("transitions[2]", "terminal state 'done' has exits"),
    ]


@pytest.mark.parametrize("missing", ["name", "initial", "states", "transitions"])
def test_chart_missing_a_key_is_rejected(missing: str) -> None:
    data = chart_data()
    del data[missing]
    with pytest.raises(ConfigError, match=f"malformed statechart: missing or bad '{missing}'"):
        Statechart.from_mapping(data)


def test_chart_from_a_file_is_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(chart_data(initial="zero")), encoding="utf-8")
    with pytest.raises(ConfigError, match="'zero' is not a declared state"):
        Statechart.from_file(path)


# --- transitions.Machine ---


class Model:
    state: str


def test_machine_is_a_real_transitions_machine(chart: Statechart) -> None:
    model = Model()
    machine = chart.machine(model)
    assert isinstance(machine, transitions.Machine)
    assert model.state == "created"
    visited = []
    for trigger, _, dest in HAPPY_PATH:
        assert getattr(model, trigger)() is True
        visited.append(model.state)
        assert model.state == dest
    assert visited == [dest for _, _, dest in HAPPY_PATH]


def test_machine_has_no_auto_transitions_and_rejects_invalid_triggers(chart: Statechart) -> None:
    model = Model()
    chart.machine(model)
    assert not hasattr(model, "to_serving")
    with pytest.raises(transitions.MachineError):
        model.serve()  # type: ignore[attr-defined]
    assert model.state == "created"
    model.configure()  # type: ignore[attr-defined]
    model.drain()  # type: ignore[attr-defined]
    model.fail()  # type: ignore[attr-defined]
    assert model.state == "failed"
    with pytest.raises(transitions.MachineError):
        model.stop()  # type: ignore[attr-defined]


# --- the wheel ships the chart ---

PROBE = """
import json, sys
import routeiq
import routeiq.lifecycle.statechart as statechart
from routeiq.cli import main
chart = statechart.Statechart.load("gateway")
print(json.dumps({
    "routeiq_file": routeiq.__file__,
    "routeiq_path": list(routeiq.__path__),
    "statechart_module": statechart.__file__,
    "statechart_dir": str(statechart.statechart_dir()),
    "states": list(chart.states),
}))
sys.stdout.flush()
sys.exit(main(["statechart"]))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hatchling") is None,
    reason="hatchling (the build backend) is not installed: add it to the dev extra",
)
def test_wheel_ships_the_statechart(tmp_path: Path) -> None:
    quiet = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd"
    work.mkdir()
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(wheels),
        str(REPO),
    ]
    subprocess.run(build, check=True, env=quiet, capture_output=True, timeout=120)
    [wheel] = wheels.glob("routeiq-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "routeiq/statecharts/gateway.yaml" in names
    assert "routeiq/lifecycle/statechart.py" in names

    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--target",
        str(site),
        str(wheel),
    ]
    subprocess.run(install, check=True, env=quiet, capture_output=True, timeout=120)

    # -S skips site (and so the editable install's .pth that points at the checkout); -P keeps
    # the cwd off sys.path. Dependencies come from the venv's site-packages, after the target.
    purelib = sysconfig.get_paths()["purelib"]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join([str(site), purelib])}
    probe = subprocess.run(
        [sys.executable, "-S", "-P", "-c", PROBE],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    first, _, mermaid = probe.stdout.partition("\n")
    found = json.loads(first)
    target = site.resolve()
    assert Path(found["statechart_module"]).resolve().is_relative_to(target), found
    assert Path(found["statechart_dir"]).resolve() == target / "routeiq" / "statecharts", found
    assert found["routeiq_file"] is None or Path(found["routeiq_file"]).resolve().is_relative_to(
        target
    ), found
    assert Path(found["routeiq_path"][0]).resolve() == target / "routeiq", found
    assert str(REPO / "routeiq") not in found["routeiq_path"], found
    assert set(found["states"]) == DESIGN_STATES
    assert mermaid == (CHECKOUT_CHARTS / "gateway.mmd").read_text(encoding="utf-8")
