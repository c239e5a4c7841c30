from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_per_test() -> Iterator[None]:
    """Collect after every test here: litellm leaves reference cycles around the HTTP clients it
    caches per event loop, and collecting them in a later test's loop reports them there."""
    yield
    gc.collect()
