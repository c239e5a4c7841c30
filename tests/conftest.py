from __future__ import annotations

import pytest

from tests.support import hooks


@pytest.fixture
def anyio_backend() -> str:
    # litellm's Router is asyncio-bound, so the gateway runs on asyncio.
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_hook_records():
    hooks.RECORD.clear()
    hooks.GATES.clear()
    yield
    hooks.RECORD.clear()
    hooks.GATES.clear()
