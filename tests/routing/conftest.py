from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(scope="session")
def litellm() -> ModuleType:
    from routeiq.routing.litellm_setup import import_litellm

    litellm = import_litellm()
    # litellm builds some pydantic schemas lazily, on the first Router, and pydantic warns about
    # litellm's own TypedDicts then; build them here so the warning cannot fail a test.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "Items .* are using the `ReadOnly` qualifier", UserWarning
        )
        warm = litellm.Router(
            model_list=[{"model_name": "w", "litellm_params": {"model": "openai/x"}}]
        )
    warm.retire()
    return litellm


@pytest.fixture
async def make_router(litellm: ModuleType) -> AsyncIterator[Callable[..., Any]]:
    """Build litellm Routers. At teardown each releases its process-wide registrations, and the
    HTTP clients litellm cached for this test's event loop are closed (litellm keeps them in a
    process-wide cache keyed by loop, so they would otherwise outlive the loop unclosed)."""
    routers: list[Any] = []

    def make(model_list: list[dict[str, Any]], **settings: Any) -> Any:
        router = litellm.Router(model_list=model_list, **settings)
        routers.append(router)
        return router

    yield make
    for router in routers:
        router.retire()
    await litellm.close_litellm_async_clients()
