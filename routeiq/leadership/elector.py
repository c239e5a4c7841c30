"""``LeaderElector``: one candidate's campaign loop, and the leader-only work while it leads.

Guarantees: leader-only work runs in a task group that exists only while this candidate leads
and is cancelled, and waited for, before the elector reports the loss; the loss is decided no
later than ``renew_deadline`` after the last successful renewal, so before the lease can expire
for anyone else (``lease_duration > renew_deadline``). Backend errors never escape: they mean
"not leader, retry later". Every state change is taken through the ``leadership`` statechart and
reported to ``record``. Not guaranteed: that work ignoring cancellation stops in time — writes
that matter must be fenced with the term's token.

The elector uses only anyio; time comes from the injected ``Clock`` so the timing logic runs
under a manual clock (per-call timeouts still use the event loop's clock).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from routeiq.errors import LeadershipLost, describe
from routeiq.leadership.election import Election, ElectionUnavailable, LeaderTerm
from routeiq.lifecycle.clock import Clock, SystemClock
from routeiq.lifecycle.statechart import Statechart, StateMachine

__all__ = ["ElectorStatistics", "LeaderElector", "LeaderWork", "Recorder"]

log = logging.getLogger(__name__)

# Below this, "time left before the deadline" is rounding noise, not time to try again in.
_TICK = 1e-6

LeaderWork = Callable[[LeaderTerm], Awaitable[None]]
Recorder = Callable[[str, Mapping[str, object]], None]


async def _run_work(work: LeaderWork, term: LeaderTerm) -> None:
    await work(term)


def _why(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled"
    return describe(exc)


def _discard(kind: str, attributes: Mapping[str, object]) -> None:
    pass


@dataclass(frozen=True, slots=True)
class ElectorStatistics:
    candidate_id: str
    state: str
    leader_id: str | None
    fencing_token: int | None
    last_renew: float | None
    churn: int


class LeaderElector:
    """Campaigns through ``election`` and runs ``work`` while this candidate leads.

    Start it with ``await tg.start(elector.run)``: it reports started once the first campaign
    has an outcome (leader, or follower), and runs until cancelled or ``resign()`` is called.
    """

    def __init__(
        self,
        election: Election,
        work: Iterable[LeaderWork] = (),
        *,
        record: Recorder = _discard,
        clock: Clock | None = None,
        chart: Statechart | None = None,
    ) -> None:
        self._election = election
        self._work = list(work)
        self._record = record
        self._clock: Clock = clock or SystemClock()
        self._machine = StateMachine(chart or Statechart.load("leadership"))
        self._term: LeaderTerm | None = None
        self._last_renew: float | None = None
        self._churn = 0
        self._running = False
        self._scope: anyio.CancelScope | None = None
        self._resigning = False
        self._changed: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    @property
    def election(self) -> Election:
        return self._election

    @property
    def state(self) -> str:
        return self._machine.state

    @property
    def term(self) -> LeaderTerm | None:
        """The term this candidate holds, ``None`` unless it leads."""
        return self._term

    def add_leader_work(self, work: LeaderWork) -> None:
        if self._running:
            raise RuntimeError("cannot add leader work after the elector has started")
        self._work.append(work)

    def statistics(self) -> ElectorStatistics:
        term = self._term
        return ElectorStatistics(
            candidate_id=self._election.candidate_id,
            state=self.state,
            leader_id=term.holder_id if term else self._election.leader_id,
            fencing_token=term.fencing_token if term else None,
            last_renew=self._last_renew,
            churn=self._churn,
        )

    def healthy(self, now: float | None = None) -> bool:
        """False when we believe we lead but have not renewed within the renew deadline."""
        if self._term is None or self._last_renew is None:
            return True
        now = self._clock.monotonic() if now is None else now
        return now - self._last_renew <= self._election.timings.renew_deadline

    async def wait_leader(self) -> LeaderTerm:
        """Wait until this candidate leads; returns its term."""
        while self._term is None:
            await self._change_event().wait()
        return self._term

    async def wait_state(self, state: str) -> None:
        """Wait until the state is ``state`` (``follower``, ``candidate`` or ``leader``)."""
        while self.state != state:
            await self._change_event().wait()

    async def resign(self) -> None:
        """Stop campaigning for good; if leading, stop the work and free the seat now, so a
        follower takes over without waiting for the lease to expire. Waits until ``run`` ends."""
        self._resigning = True
        if self._scope is not None:
            self._scope.cancel()
        if self._running and self._stopped is not None:
            await self._stopped.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("LeaderElector.run is already running")
        self._running, self._stopped = True, anyio.Event()
        announced = False

        def announce() -> None:
            nonlocal announced
            if not announced:
                announced = True
                task_status.started()

        try:
            with anyio.CancelScope() as self._scope:
                if not self._resigning:
                    await self._campaign_loop(announce)
            announce()  # resigned before the first campaign had an outcome
        finally:
            self._running, self._scope = False, None
            self._stopped.set()

    # --- follower / candidate -------------------------------------------------------------------

    async def _campaign_loop(self, announce: Callable[[], None]) -> None:
        vacant = True  # the first attempt needs no vacancy: we do not know the seat yet
        while True:
            if not vacant:
                vacant = await self._wait_vacancy()
                continue
            vacant = False
            self._fire("campaign")
            term, reason = await self._campaign()
            if term is None:
                self._fire("abandon", reason=reason)
                announce()
                continue
            self._term, self._last_renew = term, term.acquired_at
            self._fire("elected")
            announce()
            await self._lead(term)
            # Whatever ended the term may end the next one at once (say, work that fails at
            # start): wait a period so that cannot become a hot loop of elections.
            await self._clock.sleep(self._election.timings.retry_period)

    async def _wait_vacancy(self) -> bool:
        period = self._election.timings.retry_period
        try:
            return await self._election.wait_vacancy(period)
        except ElectionUnavailable as exc:  # a backend should not raise it here; be safe anyway
            log.warning("leadership backend failed while following: %s", exc)
            await self._clock.sleep(period)
            return False

    async def _campaign(self) -> tuple[LeaderTerm | None, str]:
        try:
            with anyio.fail_after(self._election.timings.renew_deadline):
                term = await self._election.campaign()
        except (ElectionUnavailable, TimeoutError) as exc:
            return None, f"backend unavailable: {describe(exc)}"
        if term is None:
            return None, f"held by {self._election.leader_id or 'another candidate'}"
        return term, ""

    # --- leader -------------------------------------------------------------------------------

    async def _lead(self, term: LeaderTerm) -> None:
        trigger, reason = "resign", "cancelled"
        try:
            try:
                async with anyio.create_task_group() as tg:
                    for work in self._work:
                        name = f"leader:{getattr(work, '__name__', work)}"
                        tg.start_soon(_run_work, work, term, name=name)
                    trigger, reason = "lose", await self._keep(term)
                    tg.cancel_scope.cancel()
            except* LeadershipLost as group:
                trigger, reason = "lose", f"leader work: {describe(group.exceptions[0])}"
            except* ElectionUnavailable as group:
                trigger = "resign"
                reason = f"leader work could not reach the backend: {describe(group.exceptions[0])}"
        except BaseException as exc:
            if trigger == "resign":
                reason = "resigned" if self._resigning else _why(exc)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                self._term = None
                self._fire(trigger, reason=reason, leader_id=None, fencing_token=term.fencing_token)
                with anyio.move_on_after(self._election.timings.retry_period):
                    await self._election.resign(term)

    async def _keep(self, term: LeaderTerm) -> str:
        """Renew ``term`` until that fails for good; returns why."""
        timings = self._election.timings
        renewed = term.acquired_at
        while True:
            await self._clock.sleep(
                max(0.0, renewed + timings.renew_interval - self._clock.monotonic())
            )
            renewed, failure = await self._renew(term, renewed)
            if failure is not None:
                return failure

    async def _renew(self, term: LeaderTerm, renewed: float) -> tuple[float, str | None]:
        """Retry the renewal every retry period until it succeeds or the deadline passes."""
        timings = self._election.timings
        deadline = renewed + timings.renew_deadline
        error = "no attempt"
        while (left := deadline - (sent := self._clock.monotonic())) > _TICK:
            try:
                with anyio.fail_after(left):
                    await self._election.renew(term)
            except LeadershipLost as exc:
                return renewed, describe(exc)
            except (ElectionUnavailable, TimeoutError) as exc:
                error = describe(exc)
            else:
                # The lease counts from when the backend got the request, which is after ``sent``.
                self._last_renew = sent
                return sent, None
            await self._clock.sleep(
                max(0.0, min(timings.retry_period, deadline - self._clock.monotonic()))
            )
        return renewed, f"not renewed within renew_deadline ({timings.renew_deadline}s): {error}"

    # --- state ----------------------------------------------------------------------------------

    def _fire(self, trigger: str, **attributes: object) -> None:
        before, after = self._machine.fire(trigger)
        if trigger in ("elected", "lose", "resign"):
            self._churn += 1
        term = self._term
        event: dict[str, object] = {
            "trigger": trigger,
            "from": before,
            "to": after,
            "candidate_id": self._election.candidate_id,
            "leader_id": term.holder_id if term else self._election.leader_id,
            "fencing_token": term.fencing_token if term else None,
        }
        event.update(attributes)
        self._record("leadership", event)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _change_event(self) -> anyio.Event:
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed
