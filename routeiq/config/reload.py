"""What a hot reload promises, for those who trigger one (config sync, the admin route).

``Reloader`` is the contract: parse and check a config, apply it (or record why it was
rejected), and say what is being served. ``routeiq.assembly.reload.RouterReloader`` implements
it by building a new Router beside the running one; config sync (``routeiq.leadership``)
drives it without knowing how a config becomes a Router.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from routeiq.config.model import GatewayConfig

__all__ = ["ReloadResult", "Reloader", "digest_of"]


def digest_of(text: str | bytes) -> str:
    """sha256 of a config's bytes (of its UTF-8 encoding when given text)."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


@dataclass(frozen=True, slots=True)
class ReloadResult:
    result: str  # "applied", "rejected" or "unchanged"
    revision: int
    digest: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "revision": self.revision,
            "digest": self.digest[:12],
            "error": self.error,
        }


class Reloader(Protocol):
    def source_path(self) -> Path | None:
        """The file the running config was loaded from (``None``: the embedded default)."""
        ...

    def running_digest(self) -> str | None:
        """The digest of the config being served (of its source text)."""
        ...

    def parse(self, text: str | bytes, source: str) -> GatewayConfig:
        """The config in ``text``; raises only ``ConfigError``. Safe in a worker thread."""
        ...

    def check_switchable(self, config: GatewayConfig) -> None:
        """Raise ``ConfigError`` unless the running gateway could switch to ``config``."""
        ...

    async def apply(self, text: str | bytes, *, revision: int | None, origin: str) -> ReloadResult:
        """Switch to ``text``: ``applied``, ``unchanged`` or ``rejected``; never raises."""
        ...

    def reject(
        self, digest: str, error: BaseException | str, *, origin: str, secrets: Iterable[str] = ()
    ) -> ReloadResult:
        """Record a rejected config (the running one keeps serving) and say why."""
        ...

    def record_rejected(self, digest: str, error: str, *, origin: str) -> None: ...
