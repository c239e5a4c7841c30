"""The alert rules end to end: real ``routeiq serve`` processes, each fault injected for real, a
real Prometheus (1 s scrape and evaluation) evaluating the shipped rules.

The rules' windows are minutes long; the test evaluates the shipped rules through the one
transformation ``tests.support.prometheus.shorten_rules`` (windows divided by ``FACTOR``,
``for`` no shorter than ``MIN_FOR_S``), while ``alerts/tests/`` covers the real windows with
promtool. Thresholds are unchanged: the slow startup really takes longer than 30 s.

Two scrape jobs, one election each (the leadership alerts assume one election per job):

- ``routeiq`` (the job the rules' ``up`` selectors name): C1-C4, whose leader is killed and
  restarted on its port three times (churn through restarts; a restarted instance is down until
  it serves again, so GatewayTargetDown may fire for it too, and is allowed), K (killed), and F
  (a ``routeiq serve`` whose startup fails: exit 3, its series never exist);
- ``routeiq-traffic``: A, whose startup is slowed past 30 s through the ``routeiq.hooks`` seam,
  then gets upstream 500s through the loopback upstream and a rejected reload.

The test asserts that each expected alert reaches firing and that no other alert fires unless
its condition really holds, measured on the processes: a target down while it (re)starts, a
startup that really took longer than 30 s (on a loaded machine, any startup may). Then it
restarts Prometheus on fresh storage and asserts that only what is still true fires again: the
two dead targets, and the slow startup if it ended within the (shortened) window. The events
themselves (the rejected reload, the churn) are inside their window but were never seen by the
fresh Prometheus: counts of unknown age, they must not fire. Last, it removes every target of
the ``routeiq`` job and waits for ``GatewayTargetAbsent``. The time to firing of each alert is
printed as a table (run with ``-s`` to see it).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from routeiq.config.loader import embedded_default
from tests.support.procs import BIN, REPO, GatewayProcess, free_port, gateway_env
from tests.support.prometheus import PrometheusServer, prometheus_path, shorten_rules

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RULES = REPO / "alerts" / "routeiq.rules.yaml"
FACTOR = 6.0  # 15m windows become 150 s (longer than a restart under load), 5m ones 50 s
MIN_FOR_S = 5.0  # `for: 30s` becomes 5 s, not 0.5 s
SLOW_S = 31.0  # the hook alone is longer than GatewayStartupSlow's 30 s budget
JOB = "routeiq"
TRAFFIC_JOB = "routeiq-traffic"
ADMIN_KEY = "admin-key-for-alert-tests"
CHAT = {"messages": [{"role": "user", "content": "hello"}]}
FIRING_BUDGET_S = 150.0

Key = tuple[str, str]  # (alertname, instance, or job for job-level alerts)


def key_of(alert: dict[str, Any]) -> Key:
    labels = alert["labels"]
    return labels["alertname"], labels.get("instance") or labels.get("job", "")


@dataclass
class AlertWatch:
    """Polls ``/api/v1/alerts`` in a thread; keeps when each alert was first seen firing."""

    prometheus: PrometheusServer
    first_firing: dict[Key, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                alerts = self.prometheus.alerts()
            except (httpx.HTTPError, AssertionError, ValueError) as exc:
                self.errors.append(repr(exc))  # Prometheus restarting; keep polling
                continue
            now = time.time()
            for alert in alerts:
                if alert["state"] == "firing":
                    self.first_firing.setdefault(key_of(alert), now)

    def __enter__(self) -> AlertWatch:
        self._thread = threading.Thread(target=self._run, name="alert-watch")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_firing(self, keys: set[Key], timeout: float) -> None:
        deadline = time.time() + timeout
        while not keys <= set(self.first_firing):
            if time.time() > deadline:
                missing = sorted(keys - set(self.first_firing))
                raise AssertionError(
                    f"not firing after {timeout}s: {missing}; firing: {sorted(self.first_firing)}"
                )
            time.sleep(0.2)


def write_config(
    path: Path,
    *,
    lock: Path,
    upstream: str | None = None,
    hooks: list[dict[str, str]] | None = None,
) -> Path:
    config = embedded_default()
    config["routeiq"] = {
        "admin_key": ADMIN_KEY,
        "drain": {"delay_s": 0},
        # Default timings: shorter renew deadlines made a leader whose event loop stalled on
        # a loaded machine step down and back up, which is real churn.
        "leadership": {"lock_path": str(lock)},
        "hooks": hooks or [],
    }
    if upstream is not None:
        config["model_list"].append(
            {
                # The loopback upstream answers every request for this model with a 500.
                "model_name": "broken",
                "litellm_params": {
                    "model": "openai/fail-500+gpt",
                    "api_key": "sk-up-0000",
                    "api_base": upstream,
                },
            }
        )
    config["litellm_settings"] = {"num_retries": 0, "request_timeout": 5}
    config["router_settings"] = {"num_retries": 0}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@dataclass
class Fleet:
    """``routeiq serve`` processes, each on its own port for the whole test."""

    directory: Path
    processes: list[GatewayProcess] = field(default_factory=list)

    def serve(
        self, name: str, config: Path, *, port: int | None = None, env: dict[str, str] | None = None
    ) -> GatewayProcess:
        port = port or free_port()
        args = [str(BIN / "routeiq"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        environment = gateway_env({"ROUTEIQ_CONFIG": str(config), **(env or {})})
        log = self.directory / f"{name}-{len(self.processes)}.log"
        process = GatewayProcess(args, port, environment, log).start()
        self.processes.append(process)
        return process

    def restart(self, process: GatewayProcess, name: str) -> GatewayProcess:
        """Kill ``process`` and start the same command on the same port (a crash, restarted)."""
        process.proc.kill()
        process.proc.wait(timeout=30)
        replacement = GatewayProcess(
            process.args,
            process.port,
            process.env,
            self.directory / f"{name}-{len(self.processes)}.log",
        ).start()
        self.processes.append(replacement)
        return replacement

    def stop_all(self) -> None:
        for process in self.processes:
            if process.proc.poll() is None:
                process.proc.kill()
        for process in self.processes:
            process.stop()


def address(process: GatewayProcess) -> str:
    return f"127.0.0.1:{process.port}"


def leads(process: GatewayProcess) -> bool:
    try:
        body = httpx.get(f"{process.url}/_lifecycle", timeout=5).json()
    except httpx.TransportError:
        return False
    return bool(body["leadership"]["state"] == "leader")


def slow_startups(processes: list[GatewayProcess]) -> dict[str, float]:
    """``instance → wall time its startup ended`` for the live processes that took over 30 s."""
    slow = {}
    for process in processes:
        if process.proc.poll() is not None:
            continue
        startup = httpx.get(f"{process.url}/_lifecycle/startup", timeout=10).json()
        created = httpx.get(f"{process.url}/_lifecycle", timeout=10).json()["events"][0]
        if startup["total_s"] > 30:
            slow[address(process)] = float(created["wall_time"]) + float(startup["total_s"])
    return slow


def wait_until(probe: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not probe():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def upstream() -> Iterator[str]:
    """The loopback OpenAI-compatible upstream as a process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream", "--port", "0"],
        cwd=REPO,
        env=gateway_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    base_url = proc.stdout.readline().strip()
    try:
        assert base_url.startswith("http://127.0.0.1:"), base_url
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def send_errors(url: str, stop: threading.Event) -> None:
    """A request for the failing model every 0.2 s until ``stop``."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.wait(0.2):
            response = client.post("/v1/chat/completions", json={"model": "broken", **CHAT})
            assert response.status_code >= 500, response.text


def reject_reload(url: str, config: Path) -> None:
    """A restart-only change (the drain delay): the reload is rejected with a 422."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["routeiq"]["drain"] = {"delay_s": 0.5}
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    response = httpx.post(
        f"{url}/_admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )
    assert response.status_code == 422, response.text


def test_each_fault_fires_its_alert_and_nothing_else(tmp_path: Path, upstream: str) -> None:
    binary = prometheus_path()
    if binary is None:
        pytest.fail("prometheus not found; run scripts/setup dev, which installs it")
    rules = tmp_path / "routeiq.rules.short.yaml"
    rules.write_text(
        shorten_rules(RULES.read_text(encoding="utf-8"), factor=FACTOR, min_for=MIN_FOR_S),
        encoding="utf-8",
    )
    lock, traffic_lock = tmp_path / "routeiq.lock", tmp_path / "traffic.lock"
    fleet = Fleet(tmp_path)
    prometheus = PrometheusServer(binary, tmp_path / "prometheus", [], [rules], discovery=True)
    a_config = write_config(
        tmp_path / "a.yaml",
        lock=traffic_lock,
        upstream=upstream,
        hooks=[{"phase": "serve", "call": "tests.support.hooks:slow", "name": "slow"}],
    )
    churn_config = write_config(tmp_path / "churn.yaml", lock=lock)
    failing_config = write_config(
        tmp_path / "failing.yaml",
        lock=lock,
        hooks=[{"phase": "observe", "call": "tests.support.hooks:fail", "name": "boom"}],
    )
    stop_traffic = threading.Event()
    traffic = threading.Thread(target=lambda: None)
    try:
        # A first: its startup takes more than 30 s and runs while the others start.
        a = fleet.serve("a", a_config, env={"ROUTEIQ_TEST_SLOW_S": str(SLOW_S)})
        churn = {"c1": fleet.serve("c1", churn_config)}
        churn["c1"].wait_ready(timeout=180)  # the first of the election leads it
        for name in ("c2", "c3", "c4"):
            churn[name] = fleet.serve(name, churn_config)
        k = fleet.serve("k", churn_config)
        for process in (*churn.values(), k):
            process.wait_ready(timeout=180)
        assert [n for n, p in churn.items() if leads(p)] == ["c1"] and not leads(k)
        # Measured before K is killed and the leaders restart: on a loaded machine any startup
        # may take longer than 30 s, and then GatewayStartupSlow for it is true.
        slow_before = set(slow_startups([*churn.values(), k]))
        failed_port = free_port()
        # A is scraped while it starts, as a pod is: down until it serves (a true side effect).
        targets: dict[str, list[str]] = {
            JOB: [address(p) for p in (*churn.values(), k)],
            TRAFFIC_JOB: [address(a)],
        }
        allowed: set[Key] = {("GatewayTargetDown", address(a))}
        prometheus.set_targets(targets)
        prometheus.start().wait_ready()

        def scraped(instances: list[str], times: int) -> Callable[[], bool]:
            def probe() -> bool:
                selector = "|".join(instances)
                expr = f'count(sum_over_time(up{{instance=~"{selector}"}}[1m]) >= {times})'
                result = prometheus.query(expr)
                return bool(result) and float(result[0]["value"][1]) == len(instances)

            return probe

        def seen_leading(process: GatewayProcess) -> Callable[[], bool]:
            def probe() -> bool:
                expr = f'leader_election_status{{instance="{address(process)}"}} == 1'
                return bool(prometheus.query(expr))

            return probe

        wait_until(scraped(targets[JOB], 3), timeout=60, what="three scrapes of every target")
        injected: dict[Key, tuple[str, float]] = {}
        with AlertWatch(prometheus) as watch:
            k.proc.kill()
            injected[("GatewayTargetDown", address(k))] = (
                "target killed (SIGKILL)",
                time.time(),
            )

            targets[JOB].append(f"127.0.0.1:{failed_port}")
            prometheus.set_targets(targets)
            failed = fleet.serve("f", failing_config, port=failed_port)
            injected[("GatewayTargetDown", f"127.0.0.1:{failed_port}")] = (
                "routeiq serve startup failure (exit 3)",
                time.time(),
            )

            # Churn through restarts: kill the leader and restart it on its port, three times,
            # without waiting for the restarted one (another member leads meanwhile).
            injected[("LeaderElectionChurn", JOB)] = (
                "3 leader crashes, each restarted",
                time.time(),
            )
            # Each leader is killed only once Prometheus has scraped it leading: a leader killed
            # between two scrapes is churn no scrape could see (it failed CI on a loaded machine).
            for _ in range(3):
                name = next(n for n, p in churn.items() if leads(p))
                wait_until(seen_leading(churn[name]), timeout=60, what=f"{name} scraped leading")
                churn[name] = fleet.restart(churn[name], name)
                allowed.add(("GatewayTargetDown", address(churn[name])))  # down while restarting
                wait_until(
                    lambda: any(leads(p) for p in churn.values()), timeout=30, what="a new leader"
                )
            name = next(n for n, p in churn.items() if leads(p))
            wait_until(seen_leading(churn[name]), timeout=60, what=f"{name} scraped leading")

            a.wait_ready(timeout=180)
            # The fault is visible from the end of A's startup (A itself says when).
            injected[("GatewayStartupSlow", address(a))] = (
                f"startup slowed by a {SLOW_S:g} s hook",
                slow_startups([a])[address(a)],
            )
            # Seen at 0 first: the rejection is then an increase.
            wait_until(scraped([address(a)], 2), timeout=60, what="two scrapes of A")
            injected[("GatewayConfigReloadRejected", address(a))] = (
                "rejected reload (restart-only change)",
                time.time(),
            )
            reject_reload(a.url, a_config)
            traffic = threading.Thread(target=send_errors, args=(a.url, stop_traffic))
            injected[("GatewayHighErrorRate", TRAFFIC_JOB)] = (
                "upstream 500s (loopback upstream)",
                time.time(),
            )
            traffic.start()

            assert failed.wait(timeout=90) == 3, failed.output()
            watch.wait_firing(set(injected), timeout=FIRING_BUDGET_S)
            stop_traffic.set()
            traffic.join(timeout=30)
            for process in churn.values():
                process.wait_ready(timeout=180)
            live = [a, *churn.values()]
            slow = slow_before | set(slow_startups(live))
            allowed |= {("GatewayStartupSlow", i) for i in slow - {address(a)}}
            fired = dict(watch.first_firing)
            unexpected = sorted(set(fired) - set(injected) - allowed)
            assert not unexpected, f"fired without a fault: {unexpected}"
            side_effects = sorted(set(fired) & allowed)

            # No alert from history: a fresh Prometheus fires only what is still true.
            still_down = {k for k in injected if k[0] == "GatewayTargetDown"}
            window_s = 15 * 60 / FACTOR
            ended = slow_startups(live)
            # A slow startup that ended within the window may fire again; one that ended
            # earlier is history and must not.
            expected_after = still_down | {
                ("GatewayStartupSlow", i)
                for i, at in ended.items()
                if time.time() - at < window_s + 5
            }
            history = {i for i, at in ended.items() if time.time() - at > window_s + 5}
            watch.first_firing.clear()
            restarted_at = time.time()
            prometheus.restart()
            watch.wait_firing(still_down, timeout=MIN_FOR_S + 40)
            # The event alerts have no `for` or one of MIN_FOR_S: watch that long again.
            time.sleep(MIN_FOR_S + 5)
            after_restart = set(watch.first_firing)
            assert still_down <= after_restart <= expected_after, sorted(after_restart)
            history_checked_s = time.time() - restarted_at

            targets.pop(JOB)
            prometheus.set_targets(targets)
            absent_key = ("GatewayTargetAbsent", JOB)
            injected[absent_key] = ("every target of the job removed", time.time())
            watch.wait_firing({absent_key}, timeout=MIN_FOR_S + 40)
            fired[absent_key] = watch.first_firing[absent_key]

        rows = [
            (name, target, fault, fired[(name, target)] - at)
            for (name, target), (fault, at) in injected.items()
        ]
        table = ["| alert | label | injected fault | time to firing | fired from history |"]
        table.append("|---|---|---|---|---|")
        table += [f"| {n} | {t} | {f} | {s:.1f} s | no |" for n, t, f, s in sorted(rows)]
        table.append(f"(true side effects that fired: {side_effects})")
        table.append(f"(slow startups older than the window at the restart: {sorted(history)})")
        table.append(
            f"(fresh Prometheus watched for {history_checked_s:.0f} s: {sorted(after_restart)})"
        )
        print("\n" + "\n".join(table))
        (tmp_path / "alert-times.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    finally:
        stop_traffic.set()
        if traffic.is_alive():
            traffic.join(timeout=30)
        fleet.stop_all()
        prometheus.stop()
