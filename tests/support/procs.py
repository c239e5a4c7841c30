"""Real gateway processes for tests: ``hypercorn routeiq.app:app`` and ``routeiq serve``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http_ready(url: str, timeout: float = 300) -> None:
    """Poll ``url``'s ``/health/ready`` until it answers 200; ``RuntimeError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@dataclass
class GatewayProcess:
    args: list[str]
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] = field(init=False)

    def start(self) -> GatewayProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"gateway exited with {self.proc.returncode}:\n{self.output()}"
                )
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"gateway not ready after {timeout}s:\n{self.output()}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()


def gateway_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ROUTEIQ_", "PROMETHEUS_MULTIPROC"))
    }
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[object]:
    """Factory: ``start_gateway(kind, env=..., args=...)`` → a started ``GatewayProcess``."""
    started: list[GatewayProcess] = []

    def start(
        kind: str = "serve", *, env: Mapping[str, str] | None = None, args: list[str] | None = None
    ) -> GatewayProcess:
        port = free_port()
        if kind == "serve":
            cmd = [str(BIN / "routeiq"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        else:
            cmd = [str(BIN / "hypercorn"), "routeiq.app:app", "--bind", f"127.0.0.1:{port}"]
        process = GatewayProcess(
            [*cmd, *(args or [])], port, gateway_env(env), tmp_path / f"gateway-{port}.log"
        )
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()
