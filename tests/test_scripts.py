"""``scripts/setup`` (and so ``scripts/run``) does not reinstall an up-to-date venv: with the
package index unreachable it still succeeds, without touching the network."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_setup_of_an_up_to_date_venv_needs_no_network() -> None:
    venv = Path(sys.prefix)
    stamp = venv / ".routeiq-setup"
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if venv != REPO / ".venv" or not stamp.is_file():
        pytest.skip("runs inside the checkout's .venv after scripts/setup (as scripts/test does)")
    assert stamp.read_text().split()[0] == digest, "pyproject.toml changed: run scripts/setup"
    env = {
        **os.environ,
        # Any attempt to install would fail: nothing listens there.
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_FIND_LINKS": "",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "1",
    }
    done = subprocess.run(
        [str(REPO / "scripts" / "setup")], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "pip" not in done.stderr
    assert stamp.read_text().split()[0] == digest
