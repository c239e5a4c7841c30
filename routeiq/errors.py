"""RouteIQ's exception tree, split by what the caller should do about it."""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "ConfigError",
    "GatewayError",
    "InvalidTransition",
    "LeadershipLost",
    "StartupError",
    "UpstreamError",
]


class GatewayError(Exception):
    """Root of every error RouteIQ raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """The configuration is invalid; ``problems`` lists each bad field as ``(path, message)``."""

    def __init__(self, problems: list[tuple[str, str]] | str, *, source: str | None = None):
        if isinstance(problems, str):
            problems = [("", problems)]
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"invalid configuration in {self.source}" if self.source else "invalid configuration"
        lines = [f"{head}:"]
        for path, message in self.problems:
            lines.append(f"  {path}: {message}" if path else f"  {message}")
        return "\n".join(lines)


class InvalidTransition(GatewayError):
    """A trigger was fired (or replayed) from a state that does not allow it."""

    def __init__(self, chart: str, state: str, trigger: str, allowed: tuple[str, ...] = ()):
        self.chart, self.state, self.trigger, self.allowed = chart, state, trigger, allowed
        hint = f"; allowed from {state!r}: {', '.join(allowed)}" if allowed else ""
        super().__init__(f"{chart}: trigger {trigger!r} is not allowed in state {state!r}{hint}")


class StartupError(GatewayError):
    """A startup phase failed; the gateway unwound what it had started and is ``failed``."""

    def __init__(
        self, phase: str, cause: BaseException, *, redact: Callable[[str], str] | None = None
    ):
        self.phase, self.cause = phase, cause
        # The message reaches stderr: ``redact`` masks the secrets the gateway knows of.
        text = describe(cause) if redact is None else redact(describe(cause))
        super().__init__(f"startup failed in phase {phase!r}: {text}")


class LeadershipLost(GatewayError):
    """This process no longer leads: a fenced write was refused or the lease could not be kept."""


class UpstreamError(GatewayError):
    """An upstream model provider failed or timed out."""


def describe(exc: BaseException) -> str:
    """One line naming an exception, for events and operator messages."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, ConfigError):
        return exc.render()
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
