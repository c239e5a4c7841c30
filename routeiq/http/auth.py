"""Bearer keys: read from the ``Authorization`` header, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

__all__ = ["bearer_token", "key_matches"]


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def key_matches(token: str | None, key: str) -> bool:
    """Whether ``token`` is ``key``, in time that does not depend on where they differ."""
    return token is not None and hmac.compare_digest(token.encode(), key.encode())
