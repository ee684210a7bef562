"""How long finished work is kept: done outbox entries and delivered notifications go after a while.

Every team event leaves an outbox entry and a delivery per subscriber; once done they only tell what
happened, so they are deleted `PLANBRIDGE_RETAIN_DAYS` after they finished, in small batches (each
its own short transaction, so an SQLite writer is never held up for long). Waiting, failed and dead
work is never deleted, and neither are received events: they are the idempotency keys and the record
of what each team system sent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from service.store.uow import UnitOfWork

BATCH = 500


def prune(uow: UnitOfWork, now: datetime, days: float, batch: int = BATCH) -> dict[str, int]:
    """Delete finished work older than `days`; return how many outbox entries and deliveries went."""
    before = now - timedelta(days=days)
    removed = {"outbox": 0, "deliveries": 0}
    for name, delete in (
        ("outbox", lambda: uow.outbox.prune_done(before, batch)),
        ("deliveries", lambda: uow.deliveries.prune_delivered(before, batch)),
    ):
        while True:
            with uow:
                count = delete()
                uow.commit()
            removed[name] += count
            if count < batch:
                break
    return removed
