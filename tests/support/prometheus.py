"""A real Prometheus server on loopback for tests: it scrapes given targets and evaluates rules.

``PrometheusServer`` writes a config scraping ``targets`` (``"127.0.0.1:<port>"``) every
``interval`` under one job, with ``rule_files`` evaluated at the same interval, and runs
Prometheus on a free loopback port with a temporary data dir. With ``discovery=True`` the
targets come from a file instead (file-based service discovery), which ``set_targets`` rewrites
while Prometheus runs, with one group per job. Instant queries go through ``/api/v1/query``,
alerts through ``/api/v1/alerts``. ``restart()`` starts it again on fresh storage. The binary is
``prometheus`` from PATH, else the copy ``scripts/setup dev`` unpacks from Debian's package
under ``.cache/tools``.

``shorten_rules`` is the one transformation the end-to-end alert test applies to the shipped
rules, so that windows of minutes run in seconds: every PromQL duration (range selectors,
``offset``, subquery ranges) and every ``for`` is divided by ``factor``, ``for`` no shorter than
``min_for``, and a number of seconds subtracted from ``time()`` (a window written as seconds) is
divided by ``factor`` too. Thresholds and everything else stay as written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import yaml

from tests.support.procs import REPO, free_port

__all__ = ["PrometheusServer", "prometheus_path", "running_prometheus", "shorten_rules"]

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
    discovery: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def targets_path(self) -> Path:
        return self.workdir / "targets.json"

    def set_targets(self, groups: Mapping[str, Sequence[str]]) -> None:
        """Replace the discovered targets: ``job → ["127.0.0.1:<port>", ...]``."""
        data = [{"targets": list(t), "labels": {"job": job}} for job, t in groups.items()]
        self.workdir.mkdir(parents=True, exist_ok=True)
        partial = self.targets_path.with_suffix(".tmp")
        partial.write_text(json.dumps(data), encoding="utf-8")
        os.replace(partial, self.targets_path)  # atomic: Prometheus never reads half a file

    def config(self) -> dict[str, Any]:
        if self.discovery:
            if not self.targets_path.exists():
                self.set_targets({self.job: list(self.targets)})
            scrape: dict[str, Any] = {
                "job_name": self.job,
                "file_sd_configs": [
                    {"files": [str(self.targets_path)], "refresh_interval": self.interval}
                ],
            }
        else:
            scrape = {"job_name": self.job, "static_configs": [{"targets": list(self.targets)}]}
        return {
            "global": {
                "scrape_interval": self.interval,
                "scrape_timeout": self.interval,
                "evaluation_interval": self.interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [scrape],
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

    def restart(self) -> None:
        """Stop, drop the stored data, start again: a fresh Prometheus with the same config."""
        self.stop()
        self.start().wait_ready()

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


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RANGE = re.compile(r"\[(\d+(?:ms|s|m|h|d))(?::(\d+(?:ms|s|m|h|d))?)?\]")
_OFFSET = re.compile(r"\boffset\s+(\d+(?:ms|s|m|h|d))")
_TIME_MINUS = re.compile(r"time\(\)\s*-\s*(\d+(?:\.\d+)?)")


def _seconds(duration: str) -> float:
    total = 0.0
    for number, unit in _DURATION.findall(duration):
        total += int(number) * _UNIT_S[unit]
    return total


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def shorten_rules(text: str, *, factor: float, min_for: float = 0.0) -> str:
    """The rule file ``text`` with its windows divided by ``factor`` (see the module doc)."""
    document = yaml.safe_load(text)

    def scale(match: re.Match[str]) -> str:
        return match.group(0).replace(
            match.group(1), _duration(_seconds(match.group(1)) / factor), 1
        )

    def scale_number(match: re.Match[str]) -> str:
        return f"time() - {float(match.group(1)) / factor:g}"

    for group in document["groups"]:
        for rule in group["rules"]:
            expr = _RANGE.sub(scale, str(rule["expr"]))
            expr = _OFFSET.sub(scale, expr)
            rule["expr"] = _TIME_MINUS.sub(scale_number, expr)
            if "for" in rule:
                rule["for"] = _duration(max(_seconds(str(rule["for"])) / factor, min_for))
    dumped: str = yaml.safe_dump(document, sort_keys=False)
    return dumped
