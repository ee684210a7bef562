"""The outbox worker: takes due entries, pushes them, and retries failures with backoff.

An entry is claimed by moving its due time one lease ahead in a short transaction, so no database
lock is held while talking to the FHIR server; a worker killed mid-push leaves the entry to come
due again, and the push is a conditional update on our identifier, so repeating it is harmless.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from service.domain.errors import PlanbridgeError
from service.fhir.client import FhirClient
from service.polling import PollingWorker
from service.settings import Settings
from service.store.retention import prune
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.notifications import silent_subscriptions

log = logging.getLogger(__name__)
CLAIM_TRIES = 3
PRUNE_SECONDS = 3600.0  # how often the worker deletes finished work past PLANBRIDGE_RETAIN_DAYS


def backoff(attempt: int, base: float = 2.0, cap: float = 900.0) -> timedelta:
    """Return the delay before retry number `attempt`: exponential, capped, with full jitter."""
    return timedelta(seconds=random.uniform(base**attempt / 2, min(cap, base**attempt)))


class OutboxWorker(PollingWorker):
    """Drains the outbox into one FHIR server."""

    name = "outbox worker"

    def __init__(self, uow: UnitOfWork, client: FhirClient, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.uow, self.client, self.settings, self.clock = uow, client, settings, clock
        self.engine = SyncEngine(UnitOfWork(uow.engine), client, settings, clock)
        self.poll_seconds = settings.worker_poll_seconds
        self._last_resync = -float("inf")
        self._last_prune = -float("inf")

    def _claim(self) -> tuple[int, str, str, str | None] | None:
        for _ in range(CLAIM_TRIES):
            try:
                with self.uow:
                    now = self.clock()
                    row = self.uow.outbox.claim_next(now)
                    if row is None:
                        return None
                    self.uow.outbox.lease(row, now, self.settings.outbox_lease_seconds)
                    claimed = (row.id, row.plan_id, row.kind, row.subject_id)
                    self.uow.commit()
                    return claimed
            except IntegrityError:
                # Another worker took an entry of the same plan at the same moment (the held-plan
                # index refused ours); look again, that plan is now skipped.
                continue
        return None

    def _run(self, kind: str, plan_id: str) -> None:
        if kind in ("push_plan", "push_goal"):  # push_goal: entries queued by 0.1
            self.engine.push(plan_id)
        elif kind == "pull_plan":
            self.engine.pull_plans([plan_id])
        elif kind == "pull_changed":
            self.engine.pull_changed()
        else:
            raise PlanbridgeError(f"unknown outbox entry kind {kind}")

    def queue_resync(self) -> None:
        """Queue a pull of everything that changed (unless one is already waiting)."""
        with self.uow:
            if not self.uow.outbox.pending_exists("*", "pull_changed", waiting_only=True):
                self.uow.outbox.add("*", "pull_changed", None, None, self.clock())
                self.uow.commit()

    def process_one(self) -> bool:
        """Push one due entry; return False when none was due."""
        claimed = self._claim()
        if claimed is None:
            return False
        entry_id, plan_id, kind, _subject = claimed
        error: str | None = None
        try:
            self._run(kind, plan_id)
        except Exception as exc:  # any failure is recorded on the entry and retried, never lost
            error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, PlanbridgeError):
                log.exception("outbox %s plan %s: unexpected error", entry_id, plan_id)
        with self.uow:
            row = self.uow.outbox.get(entry_id)
            now = self.clock()
            if error is None:
                self.uow.outbox.mark_done(row, now)
            else:
                if kind.startswith("push") and self.uow.plans.get(plan_id) is not None:
                    state = self.uow.sync.state(plan_id)
                    state.last_error = error[:2000]
                    if state.status != "conflicted":
                        state.status = "failed"
                self.uow.outbox.mark_failed(
                    row, error, now, self.settings.outbox_max_attempts, backoff(row.attempts + 1)
                )
                log.warning(
                    "outbox %s plan %s attempt %s failed: %s", entry_id, plan_id, row.attempts, error.split(":")[0]
                )
            self.uow.commit()
        return True

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
