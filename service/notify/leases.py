"""Lease renewal for the delivery worker's attempts in flight (see service.notify.worker).

A delivery is claimed by moving its due time one lease ahead; while its attempt is under way (the URL
checked again, DNS included, then the POST), the lease is renewed every third of a lease from a small
thread of the worker's own, each renewal a short token-checked UPDATE of its own
(DeliveryRepository.renew), so no other worker claims the delivery, or the subscription's next one,
while this one still works on it. A renewal that finds the claim lost (the worker stalled past its lease
and another claimed the delivery) renews it no more, and the attempt's outcome is left out.
The keeping itself is service.leases'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa

from service.leases import Hold, LeaseKeeper
from service.store.uow import UnitOfWork

__all__ = ["Hold", "Leases"]

log = logging.getLogger("service.notify.worker")  # the worker's logger


class Leases(LeaseKeeper):
    """Renews the leases of one delivery worker's claims in flight (held by delivery id), by `lease` and
    `poll` (attributes, read at each use: a test may shorten the lease)."""

    def __init__(self, engine: sa.Engine, clock: Callable[[], datetime], lease: timedelta, poll: float) -> None:
        self.clock, self.lease, self.poll = clock, lease, poll
        super().__init__(
            engine,
            self._renew_one,
            lease_seconds=lambda: self.lease.total_seconds(),
            poll_seconds=lambda: self.poll,
            clock=lambda: self.clock(),
            kind="delivery",
            thread_name="planbridge-delivery-lease",
            log=log,
        )

    def _renew_one(self, uow: UnitOfWork, hold: Hold, now: datetime) -> bool:
        return uow.deliveries.renew(hold.id, hold.token, now + self.lease)
