"""The master's parts that need no worker: status lines, signals, exits, chart, ``--workers``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from routeiq.errors import ConfigError, InvalidTransition
from routeiq.lifecycle.statechart import Statechart
from routeiq.master import parse_workers
from routeiq.master.arbiter import master_event_log_path
from routeiq.master.process import WorkerProcess, describe_exit
from routeiq.master.signals import SignalPipe


def worker_with_pipe() -> tuple[WorkerProcess, int]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    return WorkerProcess(0, 1, "w0", read, False, 0.0), write


def test_status_line_ready_arrives_in_pieces() -> None:
    worker, write = worker_with_pipe()
    os.write(write, b'{"ready": tr')
    assert worker.read_status() is None
    fd_open = [worker.status_fd is not None]
    os.write(write, b'ue, "pid": 1}\n')
    assert worker.read_status() is True
    fd_open.append(worker.status_fd is not None)
    assert fd_open == [True, False]  # closed once the line is read
    os.close(write)


@pytest.mark.parametrize(
    ("line", "error", "code"),
    [
        (b'{"error": "invalid configuration:\\n  x: y", "code": 2}\n', "invalid configuration", 2),
        (b'{"error": "startup failed", "code": 3}\n', "startup failed", 3),
        (b"garbage\n", "unreadable status line", 3),
        (b"[1, 2]\n", "unreadable status line", 3),
    ],
)
def test_status_line_failure(line: bytes, error: str, code: int) -> None:
    worker, write = worker_with_pipe()
    os.write(write, line)
    assert worker.read_status() is False
    assert worker.error is not None and worker.error.startswith(error)
    assert worker.error_code == code
    os.close(write)


def test_a_closed_pipe_without_a_word_is_not_a_status() -> None:
    worker, write = worker_with_pipe()
    os.close(write)
    assert worker.read_status() is None
    assert worker.status_fd is None and worker.error is None


def test_describe_exit_names_the_code_or_the_signal() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    assert describe_exit(status) == "exited with code 7"
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert describe_exit(status) == "was killed by signal SIGKILL"


def test_signal_pipe_records_in_order_and_restores() -> None:
    previous = signal.getsignal(signal.SIGHUP)
    pipe = SignalPipe()
    pipe.install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGCHLD)
        assert pipe.take() == [signal.SIGHUP, signal.SIGCHLD]
        assert pipe.take() == []
    finally:
        pipe.restore()
    assert signal.getsignal(signal.SIGHUP) == previous
    assert pipe.fileno() == -1


def test_the_master_chart() -> None:
    chart = Statechart.load("master")
    assert chart.initial == "starting" and chart.terminal == ("stopped", "failed")
    path = ["start", "reload", "reloaded", "drain", "stop"]
    state = chart.initial
    for trigger in path:
        state = chart.target(state, trigger)
    assert state == "stopped"
    assert chart.target("draining", "fail") == "failed"
    with pytest.raises(InvalidTransition):
        chart.target("starting", "reload")  # a SIGHUP before every worker is ready is not a reload
    with pytest.raises(InvalidTransition):
        chart.target("running", "fail")  # failing always drains the rest first


def test_parse_workers() -> None:
    assert parse_workers("3") == 3
    assert parse_workers("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "many", ""):
        with pytest.raises(ConfigError, match="workers: must be a positive integer or 'auto'"):
            parse_workers(bad)


def test_master_events_go_beside_the_workers_file() -> None:
    assert master_event_log_path(Path("/x/events.jsonl")) == Path("/x/events.master.jsonl")
    assert master_event_log_path(Path("/x/events")) == Path("/x/events.master.jsonl")


def test_cli_rejects_bad_workers_readably(capsys: pytest.CaptureFixture[str]) -> None:
    from routeiq.cli import main

    assert main(["serve", "--workers", "zero"]) == 2
    err = capsys.readouterr().err
    assert "workers: must be a positive integer or 'auto', got 'zero'" in err
    assert "Traceback" not in err
