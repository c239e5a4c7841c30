"""The master of a process group: ``routeiq serve --workers N`` (DESIGN §9).

Guarantees, in order of what happens:

- The config is loaded and validated before anything else; an invalid one exits 2 and no worker
  ever exists.
- litellm (tamed) and the modules every worker imports are imported once, here, and the heap
  is frozen (``gc.freeze()``), so workers share those pages copy-on-write and their collector
  never walks them. Then the listening socket is bound and N workers are forked. Until then
  the master has no thread, no event loop and no socket but the listener; each ``spawned``
  event records what it had (``master_threads``, ``master_sockets``, ``master_event_loop``).
- The master itself is a plain synchronous loop: ``select`` over a signal wake-up pipe and the
  workers' status pipes, and ``waitpid(-1, WNOHANG)``, which reaps every exited child, also
  ones it did not spawn (it may be PID 1 in a container).
- Its lifecycle is ``statecharts/master.yaml``; transitions and worker events (spawned, ready,
  exited with a code or a signal, restarting) go to its own ``EventLog`` and, when
  ``routeiq.event_log.path`` is set, to ``<stem>.master<suffix>`` beside the workers' file (so
  ``routeiq events replay`` still reads the workers' file).
- A worker that dies is replaced after a backoff; more than ``routeiq.supervisor.max_restarts``
  deaths within ``window_s`` drain the rest and exit 3 with one line naming the worker and how
  it died. A worker whose first startup fails ends the group: exit 2 for an invalid config, 3
  otherwise, with that worker's error.
- SIGTERM/SIGINT: every worker drains at once; exit 0 when all stopped cleanly. A second signal
  makes the workers close their listeners now; a third kills them.
- SIGHUP: the config on disk is validated (an invalid one is rejected and nothing changes),
  then a rolling restart: for each slot a new worker is started and reported ready before the
  old one is told to drain. Workers started after a SIGHUP are new interpreters
  (``python -m routeiq.master.worker``), so they run the code on disk, not the master's image;
  they no longer share the master's preloaded pages. The master's own code is not reloaded.
- The master owns the group's Prometheus multiprocess directory: emptied at start (a temporary
  one is made and removed when none is configured), a reaped worker's live gauges removed.

Not done: SIGTTIN/SIGTTOU (resize the group), re-executing the master itself on upgrade.
"""

from __future__ import annotations

import gc
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from routeiq.config.loader import load_config
from routeiq.config.model import GatewayConfig
from routeiq.errors import ConfigError
from routeiq.lifecycle.clock import Clock, SystemClock
from routeiq.lifecycle.events import AttrValue, EventKind, EventLog, JsonlSink
from routeiq.lifecycle.statechart import Statechart
from routeiq.master.process import WorkerProcess, describe_exit, preflight, preload
from routeiq.master.signals import SignalPipe
from routeiq.observability.metrics import (
    MULTIPROC_ENV,
    ProcessGroupMetrics,
    fresh_multiprocess_dir,
    mark_worker_dead,
)
from routeiq.routing.litellm_setup import validate_routing
from routeiq.routing.registry import default_registry

__all__ = ["DEFAULT_BACKLOG", "Arbiter", "master_event_log_path"]

EXIT_CONFIG = 2
EXIT_FAILED = 3  # also routeiq.master.process's codes
DEFAULT_BACKLOG = 2048
# How long past drain.delay_s + drain.timeout_s a worker may take to unwind before it is killed.
UNWIND_MARGIN_S = 30.0


def master_event_log_path(path: Path) -> Path:
    """Where the master's events go, beside the workers' sink file."""
    return path.with_name(f"{path.stem}.master{path.suffix or '.jsonl'}")


class Arbiter:
    """Spawns, supervises and stops the workers of one process group. ``run()`` once."""

    def __init__(
        self,
        *,
        workers: int,
        host: str,
        port: int,
        env: Mapping[str, str],
        config_path: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        if workers < 1:
            raise ConfigError([("workers", f"must be at least 1, got {workers}")])
        self._count = workers
        self._host, self._port = host, port
        self._env = env
        self._config_path = config_path
        self._clock = clock or SystemClock()
        self.chart = Statechart.load("master")
        self.state = self.chart.initial
        self.events = EventLog(self._clock, worker_id=f"{socket.gethostname()}-{os.getpid()}")
        self._workers: dict[int, WorkerProcess] = {}
        self._slots: dict[int, WorkerProcess | None] = {}
        self._pending: dict[int, float] = {}  # slot → when to spawn its replacement
        self._deaths: deque[float] = deque()
        self._spawned = 0
        self._signals = SignalPipe()
        self._stop_signals = 0
        self._drain_deadline: float | None = None
        self._failure: tuple[str, int] | None = None
        self._reloaded = False
        self._reload_queue: list[int] = []
        self._reload_again = False
        self._sink: JsonlSink | None = None
        self._listener: socket.socket | None = None
        self._metrics_dir: Path | None = None
        self._own_metrics_dir = False
        self._metrics: ProcessGroupMetrics | None = None

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            config = self._load()
        except ConfigError as exc:
            sys.stderr.write(f"routeiq: {exc.render()}\n")
            return EXIT_CONFIG
        settings = config.routeiq
        self._supervision = settings.supervisor
        self._drain = settings.drain
        self._backlog = int(getattr(settings.limits, "backlog", None) or DEFAULT_BACKLOG)
        if settings.event_log.path is not None:
            self._sink = JsonlSink(master_event_log_path(settings.event_log.path))
            self.events.subscribe(self._sink)
        try:
            self._prepare_metrics_dir(config)
            preload()
            gc.freeze()
            try:
                self._listener = self._bind()
            except OSError as exc:
                sys.stderr.write(f"routeiq: cannot listen on {self._host}:{self._port}: {exc}\n")
                return EXIT_FAILED
            self._signals.install()
            try:
                for slot in range(self._count):
                    self._slots[slot] = self._spawn(slot)
                assert self._metrics_dir is not None
                self._metrics = ProcessGroupMetrics(self._metrics_dir)
                self._publish()
                return self._loop()
            finally:
                self._signals.restore()
        finally:
            self._close()

    def _load(self) -> GatewayConfig:
        config = load_config(self._env, self._config_path)
        validate_routing(default_registry(), config)
        return config

    def _prepare_metrics_dir(self, config: GatewayConfig) -> None:
        configured = config.routeiq.metrics.multiproc_dir or (
            Path(self._env[MULTIPROC_ENV]) if self._env.get(MULTIPROC_ENV) else None
        )
        if configured is None:
            configured = Path(tempfile.mkdtemp(prefix="routeiq-metrics-"))
            self._own_metrics_dir = True
        fresh_multiprocess_dir(configured)
        self._metrics_dir = configured
        # Before prometheus_client is imported anywhere in this process (see metrics.py).
        os.environ[MULTIPROC_ENV] = str(configured)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self._host, self._port))
            sock.listen(self._backlog)
        except OSError:
            sock.close()
            raise
        return sock

    def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for worker in self._workers.values():
            worker.close_status()
        if self._own_metrics_dir and self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        if self._sink is not None:
            self._sink.close()

    # --- signals -------------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        for signum in self._signals.take():
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop_signals += 1
                if self._stop_signals == 1:
                    self._begin_drain(f"{signal.Signals(signum).name} received")
                elif self._stop_signals == 2:
                    self._signal_all(signal.SIGTERM)  # workers close their listeners now
                else:
                    self._signal_all(signal.SIGKILL)
            elif signum == signal.SIGHUP:
                self._begin_reload()

    # --- the loop ----------------------------------------------------------------------------

    def _loop(self) -> int:
        while True:
            fds = [self._signals.fileno()] + [
                w.status_fd for w in self._workers.values() if w.status_fd is not None
            ]
            readable, _, _ = select.select(fds, [], [], self._timeout())
            self._handle_signals()
            for worker in list(self._workers.values()):
                if worker.status_fd is not None and worker.status_fd in readable:
                    self._read_status(worker)
            self._reap()
            self._tick()
            if self.state == "draining" and not self._workers:
                return self._finish()

    def _timeout(self) -> float:
        now = self._clock.monotonic()
        due = [*self._pending.values()]
        if self._drain_deadline is not None:
            due.append(self._drain_deadline)
        # Bounded, so that a lost wake-up costs a second, not a hang.
        return max(0.0, min([1.0, *(d - now for d in due)]))

    def _tick(self) -> None:
        now = self._clock.monotonic()
        for slot, due in sorted(self._pending.items()):
            if due <= now:
                del self._pending[slot]
                self._slots[slot] = self._spawn(slot)
        if self._drain_deadline is not None and now >= self._drain_deadline and self._workers:
            self._drain_deadline = None
            late = ", ".join(f"{w.worker_id} (pid {w.pid})" for w in self._workers.values())
            timeout = self._drain.delay_s + self._drain.timeout_s + UNWIND_MARGIN_S
            self._failure = self._failure or (
                f"workers did not stop within {timeout:g}s and were killed: {late}",
                EXIT_FAILED,
            )
            self._signal_all(signal.SIGKILL)

    def _finish(self) -> int:
        if self._failure is None:
            self._fire("stop")
            return 0
        message, code = self._failure
        self._fire("fail", error=message)
        sys.stderr.write(f"routeiq: {message}\n")
        sys.stderr.flush()
        return code

    # --- workers -------------------------------------------------------------------------------

    def _spawn(self, slot: int, *, for_reload: bool = False) -> WorkerProcess:
        listener = self._listener
        assert listener is not None
        self._spawned += 1
        worker_id = f"{self.events.worker_id}-w{slot}-{self._spawned}"
        exec_code = self._reloaded
        extra = preflight()
        status_r, status_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(status_r)
            self._become_worker(status_w, worker_id, exec_code)
        os.close(status_w)
        os.set_blocking(status_r, False)
        worker = WorkerProcess(
            slot,
            pid,
            worker_id,
            status_r,
            exec_code,
            self._clock.monotonic(),
            for_reload=for_reload,
        )
        self._workers[pid] = worker
        self._worker_event(worker, "spawned", mode="exec" if exec_code else "fork", extra=extra)
        self._publish()
        return worker

    def _become_worker(self, status_w: int, worker_id: str, exec_code: bool) -> NoReturn:
        """In the forked child: drop the master's state, then serve (or exec a fresh worker)."""
        code = EXIT_FAILED
        try:
            self._signals.reset_in_child()
            for other in self._workers.values():
                other.close_status()
            if self._sink is not None:
                self._sink.close()
            assert self._listener is not None and self._metrics_dir is not None
            listen_fd = self._listener.fileno()
            extra = {"ROUTEIQ_WORKER_ID": worker_id, MULTIPROC_ENV: str(self._metrics_dir)}
            env = {**self._env, **extra}
            if exec_code:
                os.set_inheritable(listen_fd, True)
                os.set_inheritable(status_w, True)
                args = [
                    sys.executable,
                    "-m",
                    "routeiq.master.worker",
                    f"--listen-fd={listen_fd}",
                    f"--status-fd={status_w}",
                    f"--backlog={self._backlog}",
                ]
                if self._config_path is not None:
                    args.append(f"--config={self._config_path}")
                os.execve(sys.executable, args, {**os.environ, **env})
            os.environ.update(extra)
            # Not imported with this module: ``python -m routeiq.master.worker`` (the exec path
            # above) must not find the worker module already imported by its own package.
            from routeiq.master.worker import run_worker

            code = run_worker(
                listen_fd=listen_fd,
                status_fd=status_w,
                env=env,
                config_path=self._config_path,
                backlog=self._backlog,
            )
        except BaseException as exc:  # the child must never return into the master's code
            sys.stderr.write(f"routeiq: worker {worker_id} crashed: {exc!r}\n")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _read_status(self, worker: WorkerProcess) -> None:
        if worker.read_status():
            self._on_ready(worker)

    def _on_ready(self, worker: WorkerProcess) -> None:
        if worker.retiring:
            return
        worker.state = "serving"
        self._worker_event(worker, "ready", duration_s=self._clock.monotonic() - worker.spawned_at)
        if worker.for_reload:
            worker.for_reload = False
            old = self._slots.get(worker.slot)
            self._slots[worker.slot] = worker
            if old is not None and old.pid in self._workers:
                self._retire(old)
            self._reload_next()
        if self.state == "starting" and all(
            w is not None and w.state == "serving" for w in self._slots.values()
        ):
            self._fire("start")
        self._publish()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue  # an orphan re-parented to us (PID 1): reaped, nothing else to do
            self._read_status(worker)
            worker.close_status()
            self._on_exit(worker, status)

    def _on_exit(self, worker: WorkerProcess, status: int) -> None:
        if self._metrics_dir is not None:
            mark_worker_dead(self._metrics_dir, worker.pid)
        how = describe_exit(status)
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        drained = self.state == "draining" or worker.retiring
        expected = drained and (clean or os.WIFSIGNALED(status))
        if self._slots.get(worker.slot) is worker:
            self._slots[worker.slot] = None
        self._worker_event(
            worker,
            "exited",
            ok=expected,
            error=None if expected else (worker.error or how),
            exit=how,
            code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            signal=signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None,
        )
        self._publish()
        if drained:
            if not clean and self.state == "draining" and not os.WIFSIGNALED(status):
                self._failure = self._failure or (
                    f"worker {worker.worker_id} (pid {worker.pid}) {how} while draining",
                    EXIT_FAILED,
                )
            return
        if worker.state == "starting" and self.state == "starting":
            error = worker.error or how
            code = worker.error_code or EXIT_FAILED
            self._fail(f"worker {worker.slot} (pid {worker.pid}) failed to start: {error}", code)
            return
        if worker.for_reload:
            self._reload_failed(worker, worker.error or how)
            return
        self._replace(worker, worker.error or how)

    def _replace(self, worker: WorkerProcess, how: str) -> None:
        now = self._clock.monotonic()
        limits = self._supervision
        while self._deaths and self._deaths[0] < now - limits.window_s:
            self._deaths.popleft()
        if len(self._deaths) >= limits.max_restarts:
            self._fail(
                f"worker {worker.slot} (pid {worker.pid}) {how}; {len(self._deaths) + 1} deaths "
                f"within {limits.window_s:g}s exceed routeiq.supervisor.max_restarts="
                f"{limits.max_restarts}",
                EXIT_FAILED,
            )
            return
        self._deaths.append(now)
        delay = min(limits.backoff_max_s, limits.backoff_initial_s * 2 ** (len(self._deaths) - 1))
        if any(w.for_reload and w.slot == worker.slot for w in self._workers.values()):
            return  # a SIGHUP replacement for this slot is starting already
        self._pending[worker.slot] = now + delay
        self._worker_event(worker, "restarting", delay_s=round(delay, 3))
        if self._metrics is not None:
            self._metrics.worker_restarted()

    def _retire(self, worker: WorkerProcess) -> None:
        worker.retiring = True
        worker.state = "draining"
        worker.kill(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for worker in self._workers.values():
            worker.kill(signum)

    def _fail(self, message: str, code: int) -> None:
        if self._failure is None:
            self._failure = (message, code)
        self._begin_drain(message)

    def _begin_drain(self, reason: str) -> None:
        if self.state == "draining" or self.state in self.chart.terminal:
            return
        self._fire("drain", reason=reason)
        self._pending.clear()
        self._reload_queue.clear()
        # The workers' own listeners close after their drain delay; with ours closed too,
        # clients then get "connection refused" instead of a queue nobody accepts from.
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for worker in self._workers.values():
            if not worker.retiring:
                worker.retiring = True
                worker.state = "draining"
                worker.kill(signal.SIGTERM)
        self._drain_deadline = (
            self._clock.monotonic() + self._drain.delay_s + self._drain.timeout_s + UNWIND_MARGIN_S
        )
        self._publish()

    # --- SIGHUP: rolling restart ---------------------------------------------------------------

    def _begin_reload(self) -> None:
        if self.state == "reloading":
            self._reload_again = True
            return
        if self.state != "running":
            self.events.append(
                EventKind.WARNING,
                component="master",
                attributes={"message": f"SIGHUP ignored while {self.state}"},
            )
            return
        try:
            config = self._load()
        except ConfigError as exc:
            self.events.append(EventKind.CONFIG, trigger="rejected", ok=False, error=exc.render())
            sys.stderr.write(
                f"routeiq: SIGHUP: config rejected, workers unchanged: {exc.render()}\n"
            )
            return
        self._supervision = config.routeiq.supervisor
        self._drain = config.routeiq.drain
        self._fire("reload", origin=config.source)
        self._reloaded = True
        self._reload_queue = sorted(self._slots)
        self._reload_next()

    def _reload_next(self) -> None:
        if self.state != "reloading":
            return
        while self._reload_queue:
            slot = self._reload_queue.pop(0)
            if slot in self._pending:
                continue  # being replaced after a death: that replacement runs the new code
            self._spawn(slot, for_reload=True)
            return
        self._fire("reloaded")
        if self._reload_again:
            self._reload_again = False
            self._begin_reload()

    def _reload_failed(self, worker: WorkerProcess, how: str) -> None:
        self._reload_queue.clear()
        self._reload_again = False
        message = f"SIGHUP: new worker {worker.slot} (pid {worker.pid}) failed to start: {how}"
        sys.stderr.write(f"routeiq: {message}; the remaining workers keep running\n")
        self._fire("reloaded", error=message)

    # --- events and metrics -------------------------------------------------------------------

    def _fire(self, trigger: str, *, error: str | None = None, **attributes: str) -> None:
        self.state = self.chart.fire(
            self.events, self.state, trigger, error=error, attributes=attributes
        )

    def _worker_event(
        self,
        worker: WorkerProcess,
        trigger: str,
        *,
        ok: bool = True,
        error: str | None = None,
        duration_s: float | None = None,
        extra: Mapping[str, AttrValue] | None = None,
        **attributes: AttrValue,
    ) -> None:
        self.events.append(
            EventKind.WORKER,
            trigger=trigger,
            component=f"worker-{worker.slot}",
            ok=ok,
            error=error,
            duration_s=duration_s,
            attributes={
                "pid": worker.pid,
                "worker_id": worker.worker_id,
                **attributes,
                **(extra or {}),
            },
        )

    def _publish(self) -> None:
        if self._metrics is None:
            return
        counts: dict[str, int] = {}
        for worker in self._workers.values():
            counts[worker.state] = counts.get(worker.state, 0) + 1
        self._metrics.set_workers(counts)
