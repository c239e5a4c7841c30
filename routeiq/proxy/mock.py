"""Embeddings for ``mock_response`` deployments (the embedded default's ``routeiq-mock``).

litellm answers an embedding call on a ``mock_response`` deployment with the mock *text* as the
vector, which no OpenAI client can read. For a model group whose every deployment is mocked,
the gateway answers itself: one deterministic unit vector per input (the same text always gives
the same vector), as floats or as OpenAI's base64 of little-endian float32, ``dimensions`` long
(1536, litellm's mock size, by default). Nothing goes upstream; real deployments are untouched.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from routeiq.proxy.errors import ApiError

if TYPE_CHECKING:
    from routeiq.routing.runtime import Runtime

__all__ = ["DEFAULT_DIMENSIONS", "MAX_DIMENSIONS", "mock_embeddings"]

DEFAULT_DIMENSIONS = 1536
MAX_DIMENSIONS = 3072  # OpenAI's largest embedding model


def mock_embeddings(runtime: Runtime, request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The embeddings response for ``request`` if its model is mocked, else ``None``."""
    if not _is_mocked(runtime, str(request["model"])):
        return None
    raw = request["input"]
    inputs: Sequence[Any] = [raw] if isinstance(raw, str) or _is_tokens(raw) else raw
    dimensions = request.get("dimensions") or DEFAULT_DIMENSIONS
    if dimensions > MAX_DIMENSIONS:
        raise ApiError(
            400,
            f"'dimensions' may be at most {MAX_DIMENSIONS} for a mocked model",
            param="dimensions",
        )
    as_base64 = request.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(str(t) for t in item)
        tokens += len(item) if not isinstance(item, str) else max(1, len(text.split()))
        vector = _vector(text, dimensions)
        embedding: list[float] | str = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": request["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _is_mocked(runtime: Runtime, model: str) -> bool:
    alias = (runtime.config.router_settings.get("model_group_alias") or {}).get(model)
    if isinstance(alias, Mapping):
        alias = alias.get("model")
    group = alias if isinstance(alias, str) else model
    deployments = [d for d in runtime.config.model_list if d.model_name == group]
    return bool(deployments) and all(
        isinstance((d.litellm_params.model_extra or {}).get("mock_response"), str)
        for d in deployments
    )


def _is_tokens(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) for t in value)


def _vector(text: str, dimensions: int) -> list[float]:
    stream = hashlib.shake_256(text.encode(errors="replace")).digest(2 * dimensions)
    values = struct.unpack(f"<{dimensions}h", stream)
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
