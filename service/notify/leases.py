"""Lease renewal for the delivery worker's attempts in flight (see service.notify.worker).

A delivery is claimed by moving its due time one lease ahead; while its attempt is under way (the URL
checked again, DNS included, then the POST), the lease is renewed every third of a lease from a small
thread of the worker's own, each renewal a short token-checked UPDATE of its own
(DeliveryRepository.renew), so no other worker claims the delivery, or the subscription's next one,
while this one still works on it. A renewal that finds the claim lost (the worker stalled past its lease
and another claimed the delivery) renews it no more, and the attempt's outcome is left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from service.store.uow import UnitOfWork

log = logging.getLogger("service.notify.worker")  # the worker's logger


@dataclass(eq=False)
class Hold:
    """The claim of one delivery in flight, as its renewals see it. `lock` is held while it is renewed, so
    settling it waits for a renewal under way."""

    delivery_id: int
    token: datetime  # the claim's claimed_at: it stays the same through renewals
    renewed: datetime  # when its lease last started, by the worker's clock
    renewed_monotonic: float  # the same, by time.monotonic (what the renewal thread paces itself by)
    settled: bool = False  # its outcome is being recorded: no more renewals
    lost: bool = False  # a renewal found the claim no longer holding the delivery
    lock: threading.Lock = field(default_factory=threading.Lock)


class Leases:
    """Renews the leases of one delivery worker's claims in flight every third of a lease, from a thread
    that runs while there are any (and lingers `poll` seconds after the last).

    The thread paces itself by real time (time.monotonic); `renew_due(by_clock=True)` renews by the worker's
    clock instead, for a test that moves the clock by hand."""

    def __init__(self, engine: sa.Engine, clock: Callable[[], datetime], lease: timedelta, poll: float) -> None:
        self.engine, self.clock, self.lease, self.poll = engine, clock, lease, poll
        self._holds: list[Hold] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._one_pass = threading.Lock()  # the thread's pass and one called directly never run at once
        self.renewals = 0  # leases renewed so far

    def hold(self, delivery_id: int, token: datetime) -> Hold:
        """Renew this claim's lease from now on, until `release`."""
        hold = Hold(delivery_id, token, token, time.monotonic())
        with self._cond:
            self._holds.append(hold)
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._keep, name="planbridge-delivery-lease", daemon=True)
                self._thread.start()
            else:  # the thread may be waiting longer than this lease allows
                self._cond.notify_all()
        return hold

    def release(self, hold: Hold) -> None:
        """Renew this claim no more (its outcome is recorded, or left out)."""
        with self._cond:
            if hold in self._holds:
                self._holds.remove(hold)

    @staticmethod
    def settle(hold: Hold) -> None:
        """No more renewals: the outcome is about to be recorded. Waits for a renewal under way (call it
        outside a transaction)."""
        with hold.lock:
            hold.settled = True

    def _every(self) -> float:
        return self.lease.total_seconds() / 3

    def renew_due(self, *, by_clock: bool) -> int:
        """Renew, each in a short transaction of its own, every held lease a third of a lease old or more (by
        the worker's clock, or else by real time); return how many were renewed. The new lease runs from the
        worker's clock's now. A claim found lost is logged (ids only) and renewed no more."""
        every, renewed = self._every(), 0
        with self._one_pass:
            with self._cond:
                holds = list(self._holds)
            for hold in holds:
                with hold.lock:
                    now, monotonic = self.clock(), time.monotonic()
                    age = (now - hold.renewed).total_seconds() if by_clock else monotonic - hold.renewed_monotonic
                    if hold.settled or hold.lost or age < every:
                        continue
                    with UnitOfWork(self.engine) as uow:
                        kept = uow.deliveries.renew(hold.delivery_id, hold.token, now + self.lease)
                        uow.commit()
                    if kept:
                        hold.renewed, hold.renewed_monotonic = now, monotonic
                        renewed += 1
                    else:
                        hold.lost = True
                        log.warning(
                            "delivery %s: its lease ran out and another worker claimed it (or it went); "
                            "no longer renewing it",
                            hold.delivery_id,
                        )
        self.renewals += renewed
        return renewed

    def _next_wait(self) -> float:
        every = self._every()
        with self._cond:
            due = [h.renewed_monotonic + every for h in self._holds if not (h.settled or h.lost)]
        if not due:
            return max(self.poll, 0.01)
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
                log.exception("delivery lease renewal failed")
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(max(self.poll, 0.01))

    def stop(self) -> None:
        """Stop the renewals and wait for the thread (a later hold starts them again)."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            self._thread = None
            self._stopping = False
