"""The outbox worker: takes due entries, pushes them, and retries failures with backoff.

An entry is claimed by moving its due time one lease ahead in a short transaction, so no database
lock is held while talking to the FHIR server; a worker killed mid-push leaves the entry to come
due again, and the push is a conditional update on our identifier, so repeating it is harmless. A worker
that merely outlived its lease (a slow push) records its outcome only if no other worker claimed the entry
since (the claim's claimed_at is its token): otherwise the newer claim keeps the entry and its plan's hold.

While a push is in flight its lease is renewed every third of a lease (`renew_leases`, from a small thread of
the worker's own, each renewal a short transaction of its own, never the push's), so a slow push (a slow
server, a 429's Retry-After, a split push of many transactions) is never claimed by a second worker while
this one still works on it. A renewal that finds the claim lost (the worker stalled past its lease and
another claimed the entry) stops renewing it, and the push's outcome is left out as above.

One worker pushes up to `PLANBRIDGE_PUSH_CONCURRENCY` entries at once, one per plan: each in-flight push has
a slot of its own (a database session and a sync engine; the FHIR client and its keep-alive HTTP session
are shared, its request count is the worker's total), the claims stay short transactions made by the
dispatching thread, and the held-plan index keeps every plan to one entry in flight, across the slots of
one worker as across workers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta

from requests.adapters import DEFAULT_POOLSIZE, HTTPAdapter
from sqlalchemy.exc import IntegrityError

from service.domain.errors import NotFound, PlanbridgeError
from service.fhir.client import FhirClient
from service.leases import Hold
from service.polling import PollingWorker
from service.settings import Settings
from service.store.retention import prune
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.leases import _Leases
from service.sync.notifications import silent_subscriptions

log = logging.getLogger(__name__)
CLAIM_TRIES = 3
PRUNE_SECONDS = 3600.0  # how often the worker deletes finished work past PLANBRIDGE_RETAIN_DAYS
# entry id, plan id, kind, subject id, and the claim's token (its claimed_at): an outcome is recorded only while
# this claim still holds the entry, never over a newer claim made after this one's lease ran out
Claimed = tuple[int, str, str, str | None, datetime]


def backoff(attempt: int, base: float = 2.0, cap: float = 900.0) -> timedelta:
    """Return the delay before retry number `attempt`: exponential, capped, with full jitter."""
    return timedelta(seconds=random.uniform(base**attempt / 2, min(cap, base**attempt)))


@dataclass
class _Slot:
    """What one in-flight push works with: a database session and a sync engine of its own (the FHIR
    client, its HTTP session and its request count are shared)."""

    engine: SyncEngine
    uow: UnitOfWork


def _widen_http_pool(client: FhirClient | None, size: int) -> None:
    """Let the client's HTTP session keep `size` connections to the FHIR server (requests keeps 10)."""
    if client is None or size <= DEFAULT_POOLSIZE:
        return
    adapter = client.session.get_adapter(client.base_url)
    if isinstance(adapter, HTTPAdapter) and getattr(adapter, "_pool_maxsize", DEFAULT_POOLSIZE) >= size:
        return
    client.session.mount(client.base_url, HTTPAdapter(pool_connections=1, pool_maxsize=size))


class OutboxWorker(PollingWorker):
    """Drains the outbox into one FHIR server, up to `concurrency` plans at once."""

    name = "outbox worker"

    def __init__(
        self,
        uow: UnitOfWork,
        client: FhirClient,
        settings: Settings,
        clock: Callable[[], datetime],
        concurrency: int | None = None,
    ) -> None:
        self.uow, self.client, self.settings, self.clock = uow, client, settings, clock
        self.engine = SyncEngine(UnitOfWork(uow.engine), client, settings, clock)
        self.poll_seconds = settings.worker_poll_seconds
        self.concurrency = max(1, settings.push_concurrency if concurrency is None else concurrency)
        self._last_resync = -float("inf")
        self._last_prune = -float("inf")
        self._local = threading.local()  # the engine of the slot this thread is working in
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: dict[Future[None], _Slot] = {}
        self._idle: list[_Slot] = []
        self._leases = _Leases(self)

    def _claim(self) -> Claimed | None:
        for _ in range(CLAIM_TRIES):
            try:
                with self.uow.direct():
                    claimed = self.uow.outbox.claim(self.clock(), self.settings.outbox_lease_seconds)
                    if claimed is None:
                        return None
                    self.uow.commit()
                    return claimed
            except IntegrityError:
                # Another worker took an entry of the same plan at the same moment (the held-plan
                # index refused ours); look again, that plan is now skipped.
                continue
        return None

    def _run(self, kind: str, plan_id: str, on_recorded: Callable[[UnitOfWork], None] | None = None) -> None:
        engine = getattr(self._local, "engine", None) or self.engine
        if kind in ("push_plan", "push_goal"):  # push_goal: entries queued by 0.1
            engine.push(plan_id, on_recorded)
        elif kind == "pull_plan":
            engine.pull_plans([plan_id])
        elif kind == "pull_changed":
            engine.pull_changed()
        else:
            raise PlanbridgeError(f"unknown outbox entry kind {kind}")

    def queue_resync(self) -> None:
        """Queue a pull of everything that changed (unless one is already waiting)."""
        with self.uow:
            if not self.uow.outbox.pending_exists("*", "pull_changed", waiting_only=True):
                self.uow.outbox.add("*", "pull_changed", None, None, self.clock())
                self.uow.commit()

    def process_one(self) -> bool:
        """Push one due entry in this thread; return False when none was due."""
        claimed = self._claim()
        if claimed is None:
            return False
        self._handle(claimed, self.uow)
        return True

    def _handle(self, claimed: Claimed, uow: UnitOfWork) -> None:
        """Run a claimed entry and record how it went (done, or failed with a retry due later)."""
        entry_id, plan_id, *_what, claimed_at = claimed
        hold = self._leases.hold(entry_id, claimed_at, label=f"plan {plan_id}")
        try:
            self._handle_held(claimed, uow, hold)
        finally:
            self._leases.release(hold)

    def renew_leases(self) -> int:
        """Renew the lease of every push in flight whose lease is a third of a lease old or more by the worker's
        clock; return how many were renewed. The renewal thread does this by real time on its own; this is for
        a clock moved by hand (tests)."""
        return self._leases.renew_due(by_clock=True)

    def _handle_held(self, claimed: Claimed, uow: UnitOfWork, hold: Hold) -> None:
        entry_id, plan_id, kind, _subject, claimed_at = claimed
        error: str | None = None
        finished: list[bool] = []  # the outcome is recorded (True), or a newer claim holds the entry (False)

        def finish(recording: UnitOfWork) -> None:
            # A push that succeeds marks its entry done in the transaction recording it (one fewer per push).
            # An entry gone meanwhile must not undo that record: it is left to the NotFound below.
            # No more renewals from here; not waiting for one under way, which may be waiting for this
            # transaction's lock (on SQLite, the writer's): the token it names does not change.
            hold.settled = True
            try:
                finished.append(recording.outbox.finish(entry_id, self.clock(), claimed_at))
            except NotFound:
                return

        try:
            self._run(kind, plan_id, finish)
        except Exception as exc:  # any failure is recorded on the entry and retried, never lost
            error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, PlanbridgeError):
                log.exception("outbox %s plan %s: unexpected error", entry_id, plan_id)
        if error is None and finished:
            if not finished[0]:
                self._superseded(entry_id, plan_id)
            return
        self._leases.settle(hold)
        with uow:
            now = self.clock()
            if error is None:
                if not uow.outbox.finish(entry_id, now, claimed_at):
                    self._superseded(entry_id, plan_id)
            else:
                row = uow.outbox.held_by(entry_id, claimed_at)
                if row is None:  # the newer claim's push records its own outcome, and the plan's state
                    self._superseded(entry_id, plan_id)
                    return
                if kind.startswith("push") and uow.plans.get(plan_id) is not None:
                    state = uow.sync.state(plan_id)
                    state.last_error = error[:2000]
                    if state.status != "conflicted":
                        state.status = "failed"
                uow.outbox.mark_failed(row, error, now, self.settings.outbox_max_attempts, backoff(row.attempts + 1))
                log.warning(
                    "outbox %s plan %s attempt %s failed: %s", entry_id, plan_id, row.attempts, error.split(":")[0]
                )
            uow.commit()

    @staticmethod
    def _superseded(entry_id: int, plan_id: str) -> None:
        """Say why an outcome was dropped: it would have finished, or released, another worker's claim."""
        log.warning(
            "outbox %s plan %s: its lease ran out and it was claimed again (or finished) meanwhile; "
            "this worker's outcome is left out",
            entry_id,
            plan_id,
        )

    def before_pass(self) -> None:
        """The safety net: FHIR servers give up retrying notifications, so look for changes now and then;
        and, hourly, let go of finished work past its retention."""
        if self.settings.resync_seconds and time.monotonic() - self._last_resync >= self.settings.resync_seconds:
            if self.settings.fhir_base_url:
                self.queue_resync()
            self._last_resync = time.monotonic()
        if self.settings.retain_days and time.monotonic() - self._last_prune >= PRUNE_SECONDS:
            self._last_prune = time.monotonic()
            removed = prune(UnitOfWork(self.uow.engine), self.clock(), self.settings.retain_days)
            if any(removed.values()):
                log.info("pruned %s done outbox entries, %s deliveries", removed["outbox"], removed["deliveries"])
        silent_subscriptions(UnitOfWork(self.uow.engine), self.clock(), self.settings.heartbeat_timeout_seconds)

    # ---- several entries at once ----

    def _slot(self) -> _Slot:
        if self._idle:
            return self._idle.pop()
        engine = SyncEngine(UnitOfWork(self.uow.engine), self.client, self.settings, lambda: self.clock())
        return _Slot(engine, UnitOfWork(self.uow.engine))

    def _work(self, slot: _Slot, claimed: Claimed) -> None:
        self._local.engine = slot.engine
        try:
            self._handle(claimed, slot.uow)
        except Exception:  # e.g. the database went away: the lease runs out and the entry comes due again
            log.exception("outbox %s plan %s: its outcome could not be recorded", claimed[0], claimed[1])
        finally:
            self._local.engine = None

    def _fill(self, room: int, stop: threading.Event | None) -> int:
        """Claim due entries for free slots (at most `room`); return how many were handed out."""
        if self._pool is None:
            _widen_http_pool(self.client, self.concurrency)
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="planbridge-push")
        handed = 0
        while handed < room and len(self._in_flight) < self.concurrency and not (stop and stop.is_set()):
            claimed = self._claim()
            if claimed is None:
                break
            slot = self._slot()
            self._in_flight[self._pool.submit(self._work, slot, claimed)] = slot
            handed += 1
        return handed

    def _settle(self, timeout: float | None) -> int:
        """Wait up to `timeout` (None: for ever) for a push to finish; return how many have finished."""
        if not self._in_flight:
            return 0
        done, _ = wait(list(self._in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            self._idle.append(self._in_flight.pop(future))
        return len(done)

    def close(self) -> None:
        """Wait for the pushes under way, then stop renewing leases and let the slots and their threads go."""
        while self._in_flight:
            self._settle(None)
        self._leases.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._idle = []  # the next run builds its slots from the client and clock as they are then

    def run_until_idle(self, limit: int = 10_000, stop: threading.Event | None = None) -> int:
        """Process due entries, `concurrency` plans at once, until none is due or in flight (or `stop` is
        set); return how many were taken (at most `limit`). An entry whose plan is in flight waits for it."""
        if self.concurrency <= 1:
            return super().run_until_idle(limit)
        handed = 0
        try:
            while True:
                if handed < limit:
                    handed += self._fill(limit - handed, stop)
                if not self._in_flight:
                    return handed
                self._settle(None)
        finally:
            self.close()

    def run_forever(self, stop: threading.Event) -> None:
        """Push due entries until `stop` is set, claiming another whenever a slot frees up and looking for
        new ones at least every `poll_seconds`; on stop, take nothing more and let the pushes under way
        finish (a push cut short by a harder kill is retried when its lease runs out)."""
        if self.concurrency <= 1:
            try:
                super().run_forever(stop)
            finally:
                self.close()
            return
        log.info("%s started (%s pushes at once)", self.name, self.concurrency)
        last_pass = -float("inf")
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() - last_pass >= self.poll_seconds:
                        last_pass = time.monotonic()
                        self.before_pass()
                    self._fill(self.concurrency, stop)
                except Exception:  # the worker must outlive any single failure; the next poll retries
                    log.exception("%s pass failed", self.name)
                if self._in_flight:
                    self._settle(self.poll_seconds)
                else:
                    stop.wait(self.poll_seconds)
        finally:
            self.close()
        log.info("%s stopped", self.name)
