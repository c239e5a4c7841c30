"""A real Prometheus server on loopback for tests: it scrapes given targets and evaluates rules.

``PrometheusServer`` writes a config scraping ``targets`` (``"127.0.0.1:<port>"``) every
``interval`` under one job, with ``rule_files`` evaluated at the same interval, and runs
Prometheus on a free loopback port with a temporary data dir. Instant queries go through
``/api/v1/query``, alerts through ``/api/v1/alerts``. The binary is ``prometheus`` from PATH,
else the copy ``scripts/setup dev`` unpacks from Debian's package under ``.cache/tools``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import yaml

from tests.support.procs import REPO, free_port

__all__ = ["PrometheusServer", "prometheus_path", "running_prometheus"]

PROMETHEUS_FALLBACK = REPO / ".cache" / "tools" / "prom" / "usr" / "bin" / "prometheus"

T = TypeVar("T")


def prometheus_path() -> str | None:
    found = shutil.which("prometheus")
    if found:
        return found
    return str(PROMETHEUS_FALLBACK) if PROMETHEUS_FALLBACK.is_file() else None


@dataclass
class PrometheusServer:
    binary: str
    workdir: Path
    targets: Sequence[str]
    rule_files: Sequence[Path] = ()
    job: str = "routeiq"
    interval: str = "1s"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.interval,
                "scrape_timeout": self.interval,
                "evaluation_interval": self.interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": self.job, "static_configs": [{"targets": list(self.targets)}]}
            ],
        }

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config()), encoding="utf-8")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        return self

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited with {self.proc.returncode}:\n{self.output()}"
                )
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200
            except httpx.TransportError:
                return False

        self.wait_for(ready, timeout=timeout, what="prometheus ready")

    def _api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params} failed: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query: a list of ``{"metric": {...}, "value": [t, v]}``."""
        data = self._api("query", query=expr)
        if data["resultType"] not in ("vector", "matrix"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), each with ``labels``, ``state`` and ``value``."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return alerts

    def target_health(self) -> dict[str, str]:
        """``instance → health`` ("up", "down", "unknown") of the active scrape targets."""
        data = self._api("targets", state="active")
        return {t["labels"]["instance"]: t["health"] for t in data["activeTargets"]}

    def wait_for(
        self, probe: Callable[[], T], *, timeout: float, what: str, poll: float = 0.2
    ) -> T:
        """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(poll)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.workdir / "data", ignore_errors=True)


@contextmanager
def running_prometheus(
    workdir: Path,
    targets: Sequence[str],
    *,
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
    binary: str | None = None,
) -> Iterator[PrometheusServer]:
    """Start Prometheus scraping ``targets``, wait until it is ready, stop it on exit."""
    found = binary or prometheus_path()
    if found is None:
        raise FileNotFoundError(
            "prometheus not found on PATH nor at .cache/tools/prom/usr/bin/prometheus; "
            "run scripts/setup dev, which installs it"
        )
    server = PrometheusServer(found, workdir, targets, rule_files, interval=interval)
    try:
        server.start().wait_ready()
        yield server
    finally:
        server.stop()
