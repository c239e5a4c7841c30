"""The narrow contract between the elector and an election backend.

An ``Election`` answers four questions for one candidate: may I lead now (``campaign``), do I
still lead (``renew``), let go (``resign``), and is the seat free yet (``wait_vacancy``). It
keeps no loop of its own; ``LeaderElector`` decides when to ask, with the timings below.

A backend raises ``LeadershipLost`` only when it knows the term is over, and
``ElectionUnavailable`` when it cannot tell (backend unreachable, request timed out): the
elector keeps a term through such errors until the renew deadline, never past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from routeiq.errors import ConfigError, GatewayError

__all__ = ["Election", "ElectionUnavailable", "LeaderTerm", "LeaderTimings"]


class ElectionUnavailable(GatewayError):
    """The election backend could not be reached or did not answer in time; retry later."""


@dataclass(frozen=True, slots=True)
class LeaderTerm:
    """One continuous stretch of leadership held by ``holder_id``.

    ``fencing_token`` grows with every new term of the same election; a write that carries it
    is refused once a later term exists. ``acquired_at`` is the monotonic time the winning
    attempt was *sent*, so any lease it obtained lasts at least until ``acquired_at + TTL``.
    """

    holder_id: str
    fencing_token: int
    acquired_at: float


@dataclass(frozen=True, slots=True)
class LeaderTimings:
    """client-go's three durations, in seconds: lease > renew deadline > retry period.

    A leader renews every ``renew_interval`` (a third of the lease), retries a failed renewal
    every ``retry_period``, and steps down once ``renew_deadline`` has passed since its last
    successful renewal, which is before the lease can expire anywhere else.
    """

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        for name in ("lease_duration", "renew_deadline", "retry_period"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problems.append((name, f"must be a positive number of seconds, got {value!r}"))
        if not problems:
            if self.lease_duration <= self.renew_deadline:
                problems.append((
                    "lease_duration",
                    f"must be greater than renew_deadline ({self.lease_duration} <= "
                    f"{self.renew_deadline}); raise lease_duration or lower renew_deadline",
                ))  # fmt: skip
            if self.renew_deadline <= self.retry_period:
                problems.append((
                    "renew_deadline",
                    f"must be greater than retry_period ({self.renew_deadline} <= "
                    f"{self.retry_period}); raise renew_deadline or lower retry_period",
                ))  # fmt: skip
        if problems:
            raise ConfigError(problems, source="leadership timings")

    @property
    def renew_interval(self) -> float:
        return self.lease_duration / 3


class Election(Protocol):
    """One candidate's view of one election. Calls come from a single task at a time."""

    @property
    def candidate_id(self) -> str: ...

    @property
    def timings(self) -> LeaderTimings: ...

    @property
    def leader_id(self) -> str | None:
        """The holder seen by the latest call (``None``: vacant or unknown). Never blocks."""
        ...

    async def campaign(self) -> LeaderTerm | None:
        """Try once to take the seat: our new term, or ``None`` if another holds it.

        Raises ``ElectionUnavailable`` when the backend cannot be reached.
        """
        ...

    async def renew(self, term: LeaderTerm) -> None:
        """Extend ``term``; ``LeadershipLost`` if it is over, ``ElectionUnavailable`` if unsure."""
        ...

    async def resign(self, term: LeaderTerm) -> None:
        """Give the seat up now so another candidate need not wait for expiry. Never raises
        backend errors; what could not be released is released at the next chance."""
        ...

    async def wait_vacancy(self, period: float) -> bool:
        """Return ``True`` as soon as the seat may be free, ``False`` after ``period``.
        Never raises backend errors: an unreachable backend means ``False`` after ``period``."""
        ...
