"""Lease renewal for the outbox worker's in-flight pushes (see service.sync.worker): each claim is held by
renewing its lease every third of a lease, from a small thread of the worker's own, each renewal a short
token-checked transaction of its own (OutboxRepository.renew)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from service.store.uow import UnitOfWork

if TYPE_CHECKING:
    from service.sync.worker import OutboxWorker

log = logging.getLogger("service.sync.worker")  # the worker's logger, as before the move


@dataclass(eq=False)
class _Hold:
    """The claim of one in-flight push, as its renewals see it. `lock` is held while it is renewed, so
    settling it waits for a renewal under way."""

    entry_id: int
    plan_id: str
    token: datetime  # the claim's claimed_at: it stays the same through renewals
    renewed: datetime  # when its lease last started, by the worker's clock
    renewed_monotonic: float  # the same, by time.monotonic (what the renewal thread paces itself by)
    settled: bool = False  # its outcome is being recorded: no more renewals (nor is a finished entry a loss)
    lost: bool = False  # a renewal found another claim holding the entry (or it finished or went)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Leases:
    """Renews the leases of one worker's in-flight pushes every third of a lease, from a thread that runs
    while there are pushes in flight (and lingers `poll_seconds` after the last).

    The thread paces itself by real time (time.monotonic), never by the worker's clock: in production they
    agree, and a test that moves the clock by hand decides when leases are renewed (`renew_due(by_clock=True)`,
    the worker's `renew_leases`) without racing a thread that reads the same clock."""

    def __init__(self, worker: OutboxWorker) -> None:
        self._worker = worker
        self._holds: list[_Hold] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._one_pass = threading.Lock()  # the thread's pass and one called directly never run at once
        self.renewals = 0  # leases renewed so far (either way)

    def hold(self, entry_id: int, plan_id: str, token: datetime) -> _Hold:
        """Renew this claim's lease from now on, until `release`."""
        hold = _Hold(entry_id, plan_id, token, token, time.monotonic())
        with self._cond:
            lingering = not any(not (h.settled or h.lost) for h in self._holds)
            self._holds.append(hold)
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._keep, name="planbridge-lease", daemon=True)
                self._thread.start()
            elif lingering:  # its wait (poll_seconds) may be longer than this lease allows
                self._cond.notify_all()
        return hold

    def release(self, hold: _Hold) -> None:
        with self._cond:
            self._holds.remove(hold)

    @staticmethod
    def settle(hold: _Hold) -> None:
        """Renew the claim no more: its outcome is about to be recorded. Waits for a renewal under way, so
        none commits between the outcome's read of the entry and its write (call it outside a transaction)."""
        with hold.lock:
            hold.settled = True

    def _every(self) -> float:
        return self._worker.settings.outbox_lease_seconds / 3

    def renew_due(self, *, by_clock: bool) -> int:
        """Renew, each in a short transaction of its own, every held lease a third of a lease old or more (by
        the worker's clock, or else by real time); return how many were renewed. The new lease runs from the
        worker's clock's now. A claim found lost is logged (ids only) and renewed no more."""
        worker = self._worker
        seconds = worker.settings.outbox_lease_seconds
        every = self._every()
        renewed = 0
        with self._one_pass:
            with self._cond:
                holds = list(self._holds)
            for hold in holds:
                with hold.lock:
                    now, monotonic = worker.clock(), time.monotonic()
                    age = (now - hold.renewed).total_seconds() if by_clock else monotonic - hold.renewed_monotonic
                    if hold.settled or hold.lost or age < every:
                        continue
                    uow = UnitOfWork(worker.uow.engine)
                    with uow:
                        until = uow.outbox.renew(hold.entry_id, hold.token, now, seconds)
                        uow.commit()
                    if until is not None:
                        hold.renewed, hold.renewed_monotonic = now, monotonic
                        renewed += 1
                    elif not hold.settled:  # finished under it by its own push is no loss
                        hold.lost = True
                        log.warning(
                            "outbox %s plan %s: its lease ran out and another worker claimed it (or it went); "
                            "no longer renewing it",
                            hold.entry_id,
                            hold.plan_id,
                        )
        self.renewals += renewed
        return renewed

    def _next_wait(self) -> float:
        """Seconds until the next renewal comes due by real time; with nothing to renew, `poll_seconds`."""
        every = self._every()
        with self._cond:
            due = [h.renewed_monotonic + every for h in self._holds if not (h.settled or h.lost)]
        if not due:
            return max(self._worker.poll_seconds, 0.01)
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
                log.exception("outbox lease renewal failed")
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(max(self._worker.poll_seconds, 0.01))

    def stop(self) -> None:
        """Stop the renewals and wait for the thread (a push still in flight is no longer renewed; a later
        claim starts them again)."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            self._thread = None
            self._stopping = False
