"""Lease renewal for the outbox worker's in-flight pushes (see service.sync.worker): each claim is held by
renewing its lease every third of a lease, from a small thread of the worker's own, each renewal a short
token-checked transaction of its own (OutboxRepository.renew). The keeping itself is service.leases'."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from service.leases import Hold, LeaseKeeper
from service.store.uow import UnitOfWork

if TYPE_CHECKING:
    from service.sync.worker import OutboxWorker

log = logging.getLogger("service.sync.worker")  # the worker's logger, as before the move


class _Leases(LeaseKeeper):
    """Renews the leases of one outbox worker's in-flight pushes (held by entry id, labelled with the plan id
    for logs), by the worker's lease (`outbox_lease_seconds`), clock and poll, each read at each use."""

    def __init__(self, worker: OutboxWorker) -> None:
        self._worker = worker
        super().__init__(
            worker.uow.engine,
            self._renew_one,
            lease_seconds=lambda: worker.settings.outbox_lease_seconds,
            poll_seconds=lambda: worker.poll_seconds,
            clock=lambda: worker.clock(),
            kind="outbox",
            thread_name="planbridge-lease",
            log=log,
        )

    def _renew_one(self, uow: UnitOfWork, hold: Hold, now: datetime) -> bool:
        seconds = self._worker.settings.outbox_lease_seconds
        return uow.outbox.renew(hold.id, hold.token, now, seconds) is not None
