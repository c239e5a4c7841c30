"""Importing any routeiq module has no side effects (checked in a clean subprocess per module).

"No side effect" means: routeiq's own code reads no environment variable and opens no file;
nothing opens a socket or starts a thread; litellm and prometheus_client are not imported (so
nothing can be registered in prometheus_client's default registry).
"""

from __future__ import annotations

import concurrent.futures
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import routeiq

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(routeiq.__file__).parent

PROBE = r"""
import json, os, sys, sysconfig, threading
from collections.abc import MutableMapping

PACKAGE_DIR = sys.argv[2]
STDLIB = (sysconfig.get_paths()["stdlib"], "<frozen")
findings = []

def _in_package(filename):
    return filename.startswith(PACKAGE_DIR)

def _caller_in_package(skip):
    frame = sys._getframe(skip)
    return _in_package(frame.f_code.co_filename), f"{frame.f_code.co_filename}:{frame.f_lineno}"

class WatchedEnviron(MutableMapping):
    def __init__(self, inner):
        self._inner = inner
    def _note(self, what, key):
        ours, where = _caller_in_package(3)
        if ours:
            findings.append(f"env {what} {key!r} at {where}")
    def __getitem__(self, key):
        self._note("read", key)
        return self._inner[key]
    def get(self, key, default=None):
        self._note("read", key)
        return self._inner.get(key, default)
    def __contains__(self, key):
        self._note("check", key)
        return key in self._inner
    def __setitem__(self, key, value):
        self._note("write", key)
        self._inner[key] = value
    def __delitem__(self, key):
        self._note("delete", key)
        del self._inner[key]
    def __iter__(self):
        self._note("iterate", "*")
        return iter(self._inner)
    def __len__(self):
        return len(self._inner)
    def copy(self):
        self._note("copy", "*")
        return dict(self._inner)

os.environ = WatchedEnviron(os.environ)

IMPORT_SUFFIXES = (".py", ".pyc", ".so", ".pth", ".typed")

def audit(event, args):
    if event == "open":
        path = args[0]
        if isinstance(path, int) or str(path).endswith(IMPORT_SUFFIXES):
            return
        # Attribute the open to the innermost frame outside the standard library: a library
        # that reads its own files (pydantic's plugin discovery…) is not routeiq opening them.
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(STDLIB):
            frame = frame.f_back
        if frame is not None and _in_package(frame.f_code.co_filename):
            findings.append(f"open {path!r} at {frame.f_code.co_filename}:{frame.f_lineno}")
    elif event in ("socket.__new__", "socket.connect", "socket.bind", "subprocess.Popen"):
        findings.append(f"{event} during import")

sys.addaudithook(audit)
threads_before = threading.active_count()
import importlib
module = importlib.import_module(sys.argv[1])
if threading.active_count() != threads_before:
    findings.append(f"threads started: {[t.name for t in threading.enumerate()]}")
for heavy in ("litellm", "prometheus_client", "aetcd", "opentelemetry.sdk.trace"):
    if heavy in sys.modules:
        findings.append(f"imported {heavy}")
print(json.dumps(findings))
"""


def routeiq_modules() -> list[str]:
    names = ["routeiq"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="routeiq."):
        names.append(info.name)
    return sorted(names)


def probe(module: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module, str(PACKAGE_DIR)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        return [f"import failed: {result.stderr.strip().splitlines()[-1:]}"]
    findings: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return findings


@pytest.mark.timeout(600)
def test_importing_any_module_has_no_side_effects() -> None:
    modules = routeiq_modules()
    assert "routeiq.app" in modules and "routeiq.assembly.gateway" in modules
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = dict(zip(modules, pool.map(probe, modules), strict=True))
    offenders = {module: findings for module, findings in results.items() if findings}
    assert offenders == {}


def test_the_probe_catches_side_effects(tmp_path: Path) -> None:
    """The probe is not blind: a module that reads env and opens a file at import is caught."""
    package = tmp_path / "routeiq_probe_target"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os\nHOME = os.environ.get('HOME')\nopen(__file__ + '.txt', 'w').close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "routeiq_probe_target", str(package)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    findings = json.loads(result.stdout.strip().splitlines()[-1])
    assert any(f.startswith("env read 'HOME'") for f in findings), findings
    assert any(f.startswith("open ") for f in findings), findings


def test_app_is_a_plain_asgi_callable() -> None:
    from routeiq.app import GatewayApp, app

    assert isinstance(app, GatewayApp)
    assert app.gateway is None  # nothing was built at import
