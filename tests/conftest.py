from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

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


@pytest.fixture(autouse=True)
def _close_litellm_clients() -> Iterator[None]:
    """Close and forget the HTTP clients litellm cached during the test.

    litellm caches its clients process-wide, for 600 s. A client cached on one test's event
    loop outlives that loop; once the suite has run longer than the cache's TTL, the evicted
    client is garbage-collected unclosed and fails whichever test is running then with a
    ``ResourceWarning`` (it failed CI once, at 633 s). The gateway, one per process, does not
    have this problem: its loop lives as long as the cache.
    """
    yield
    litellm = sys.modules.get("litellm")
    cache = getattr(litellm, "in_memory_llm_clients_cache", None)
    if litellm is None or cache is None or not getattr(cache, "cache_dict", None):
        return
    asyncio.run(litellm.close_litellm_async_clients())
    cache.flush_cache()
