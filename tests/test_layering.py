"""The packages' layering, checked on what importing a module really imports (fresh interpreters).

- ``routeiq.lifecycle`` (events, statechart, supervisor, clock, phases…) is the core: importing
  any of its modules imports no feature package. Nor does importing any module of
  ``routeiq.config``.
- The feature packages never import the composition root (``routeiq.assembly``) or the entry
  points above it at run time (type-only imports are fine).

``routeiq/__init__.py`` re-exports the public names, so importing any submodule normally runs
it and imports everything; the probe registers a bare ``routeiq`` package instead, so that
``sys.modules`` shows only what the module itself pulls in.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import routeiq

PACKAGE_DIR = Path(routeiq.__file__).parent

FEATURES = ("routing", "proxy", "observability", "leadership", "mcp", "http", "master")
ABOVE_FEATURES = ("assembly", "app", "serve", "cli", "master", "__main__")

PROBE = r"""
import importlib, json, sys, types

root = types.ModuleType("routeiq")
root.__path__ = [sys.argv[1]]
sys.modules["routeiq"] = root
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("routeiq."))))
"""


def modules_of(package: str) -> list[str]:
    path = PACKAGE_DIR / package
    return [f"routeiq.{package}"] + [
        f"routeiq.{package}.{info.name}" for info in pkgutil.iter_modules([str(path)])
    ]


def imported_by(*modules: str) -> set[str]:
    """Every ``routeiq.*`` module that importing ``modules`` imports, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(PACKAGE_DIR), *modules],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def packages(modules: set[str]) -> set[str]:
    return {name.split(".")[1] for name in modules}


@pytest.mark.parametrize("module", modules_of("lifecycle"))
def test_the_lifecycle_core_imports_no_feature(module: str) -> None:
    assert packages(imported_by(module)) & {*FEATURES, *ABOVE_FEATURES} == set()


@pytest.mark.parametrize("module", modules_of("config"))
def test_the_config_imports_no_feature(module: str) -> None:
    # The features read the config (routeiq.config.mcp holds the MCP gateway's settings); it
    # never reads them.
    assert packages(imported_by(module)) & {*FEATURES, *ABOVE_FEATURES} == set()


def test_features_never_import_the_composition_root() -> None:
    features = [
        name for package in (*FEATURES, "config", "lifecycle") if package != "master"
        for name in modules_of(package)
    ]  # fmt: skip
    imported = imported_by(*features)
    assert {name for name in imported if name.split(".")[1] in ABOVE_FEATURES} == set()


def test_the_probe_sees_what_a_module_imports() -> None:
    """The probe can fail: the ASGI app (the composition root and the HTTP routes) imports
    every feature but the master."""
    assert set(FEATURES) - {"master"} <= packages(imported_by("routeiq.app"))
