"""Lease renewal for a worker's claims in flight (the outbox worker's pushes, service.sync.leases; the
delivery worker's attempts, service.notify.leases): each claim is held by renewing its lease every third of
a lease, from a small thread of the worker's own, each renewal a short token-checked transaction of its own.
A renewal that finds the claim lost (the worker stalled past its lease and another claimed it) renews it no
more, and the worker leaves the claim's outcome out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from service.store.uow import UnitOfWork


@dataclass(eq=False)
class Hold:
    """The claim of one piece of work in flight, as its renewals see it. `lock` is held while it is renewed,
    so settling it waits for a renewal under way."""

    id: int  # the claimed row's id (an outbox entry, a delivery)
    token: datetime  # the claim's claimed_at: it stays the same through renewals
    renewed: datetime  # when its lease last started, by the worker's clock
    renewed_monotonic: float  # the same, by time.monotonic (what the renewal thread paces itself by)
    label: str | None = None  # more ids to name it by in logs (ids only: no PHI), e.g. "plan <id>"
    settled: bool = False  # its outcome is being recorded: no more renewals (nor is a finished claim a loss)
    lost: bool = False  # a renewal found another claim holding the row (or it finished or went)
    lock: threading.Lock = field(default_factory=threading.Lock)


# One renewal, in the unit of work given (the keeper commits it): move the claim's lease to run from `now`,
# only while the claim (hold.token) still holds the row; return whether it did.
Renew = Callable[[UnitOfWork, Hold, datetime], bool]


class LeaseKeeper:
    """Renews the leases of one worker's claims in flight every third of a lease, from a thread that runs
    while there are claims in flight (and lingers `poll_seconds` after the last).

    The thread paces itself by real time (time.monotonic), never by the worker's clock: in production they
    agree, and a test that moves the clock by hand decides when leases are renewed (`renew_due(by_clock=True)`,
    the worker's `renew_leases`) without racing a thread that reads the same clock.

    `lease_seconds` and `poll_seconds` are read at each use; `kind` names the claims in logs ("outbox",
    "delivery"), with their ids only."""

    def __init__(
        self,
        engine: sa.Engine,
        renew: Renew,
        *,
        lease_seconds: Callable[[], float],
        poll_seconds: Callable[[], float],
        clock: Callable[[], datetime],
        kind: str,
        thread_name: str,
        log: logging.Logger,
    ) -> None:
        self._engine, self._renew = engine, renew
        self._lease_seconds, self._poll_seconds, self._clock = lease_seconds, poll_seconds, clock
        self._kind, self._thread_name, self._log = kind, thread_name, log
        self._holds: list[Hold] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._one_pass = threading.Lock()  # the thread's pass and one called directly never run at once
        self.renewals = 0  # leases renewed so far (either way)

    def hold(self, row_id: int, token: datetime, *, label: str | None = None) -> Hold:
        """Renew this claim's lease from now on, until `release`."""
        hold = Hold(row_id, token, token, time.monotonic(), label)
        with self._cond:
            lingering = not any(not (h.settled or h.lost) for h in self._holds)
            self._holds.append(hold)
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._keep, name=self._thread_name, daemon=True)
                self._thread.start()
            elif lingering:  # its wait (poll_seconds) may be longer than this lease allows
                self._cond.notify_all()
        return hold

    def release(self, hold: Hold) -> None:
        """Renew this claim no more (its outcome is recorded, or left out)."""
        with self._cond:
            if hold in self._holds:
                self._holds.remove(hold)

    @staticmethod
    def settle(hold: Hold) -> None:
        """Renew the claim no more: its outcome is about to be recorded. Waits for a renewal under way, so
        none commits between the outcome's read of the row and its write (call it outside a transaction)."""
        with hold.lock:
            hold.settled = True

    def _every(self) -> float:
        return self._lease_seconds() / 3

    def _name(self, hold: Hold) -> str:
        """How the logs name a claim: ids only."""
        return f"{self._kind} {hold.id}" + (f" {hold.label}" if hold.label else "")

    def renew_due(self, *, by_clock: bool) -> int:
        """Renew, each in a short transaction of its own, every held lease a third of a lease old or more (by
        the worker's clock, or else by real time); return how many were renewed. The new lease runs from the
        worker's clock's now. A claim found lost is logged (ids only) and renewed no more."""
        every = self._every()
        renewed = 0
        with self._one_pass:
            with self._cond:
                holds = list(self._holds)
            for hold in holds:
                with hold.lock:
                    now, monotonic = self._clock(), time.monotonic()
                    age = (now - hold.renewed).total_seconds() if by_clock else monotonic - hold.renewed_monotonic
                    if hold.settled or hold.lost or age < every:
                        continue
                    with UnitOfWork(self._engine) as uow:
                        kept = self._renew(uow, hold, now)
                        uow.commit()
                    if kept:
                        hold.renewed, hold.renewed_monotonic = now, monotonic
                        renewed += 1
                    # Settled meanwhile without the lock (the outbox worker's push recording its outcome, which
                    # must not wait for this renewal): finished under it by its own claim is no loss.
                    elif not hold.settled:
                        hold.lost = True
                        self._log.warning(
                            "%s: its lease ran out and another worker claimed it (or it went); no longer renewing it",
                            self._name(hold),
                        )
        self.renewals += renewed
        return renewed

    def _next_wait(self) -> float:
        """Seconds until the next renewal comes due by real time; with nothing to renew, `poll_seconds`."""
        every = self._every()
        with self._cond:
            due = [h.renewed_monotonic + every for h in self._holds if not (h.settled or h.lost)]
        if not due:
            return max(self._poll_seconds(), 0.01)
        return max(0.005, min(due) - time.monotonic())

    def _keep(self) -> None:
        while True:
            wait = self._next_wait()
            with self._cond:
                if not self._stopping:
                    self._cond.wait(wait)
                if self._stopping or not self._holds:
                    self._thread = None
                    return
            try:
                self.renew_due(by_clock=False)
            except Exception:  # e.g. the database went away: try again a poll later
                self._log.exception("%s lease renewal failed", self._kind)
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(max(self._poll_seconds(), 0.01))

    def stop(self) -> None:
        """Stop the renewals and wait for the thread (a claim still in flight is no longer renewed; a later
        hold starts them again)."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            self._thread = None
            self._stopping = False
