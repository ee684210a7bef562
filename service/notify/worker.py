"""The delivery worker: POSTs each plan change to its subscribers, signed, in order, with retries.

Like the outbox worker, a delivery is claimed by moving its due time one lease ahead in a short
transaction (SKIP LOCKED on PostgreSQL), so no lock is held while the receiver answers. One plan's
deliveries to one subscription go strictly in sequence order (see DeliveryRepository.claim_next).
Every retry carries the same `webhook-id`; a receiver dedupes on it (a worker killed after sending
but before recording sends again after the lease: at least once, never out of order).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3

from service.fhir.client import retry_after_seconds
from service.notify import http
from service.notify.ssrf import OutboundGuard, OutboundRefused
from service.polling import PollingWorker
from service.settings import Settings
from service.signing import sign_headers
from service.store.uow import UnitOfWork

log = logging.getLogger(__name__)
BACKOFF_BASE = 30.0  # seconds before the first retry, at most; doubles each attempt
BACKOFF_CAP = 6 * 3600.0
BACKOFF_FLOOR = 1.0
RETRY_AFTER_CAP = 24 * 3600.0
Sender = Callable[[http.Target, bytes, dict[str, str], float], http.Answer]


def backoff(attempt: int, rng: random.Random | None = None) -> timedelta:
    """Return the delay after failed attempt number `attempt`: exponential, capped, full jitter."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1))
    return timedelta(seconds=max(BACKOFF_FLOOR, (rng or random).uniform(0, ceiling)))


@dataclass(frozen=True)
class Claimed:
    """What one attempt needs, read in the claiming transaction."""

    delivery_id: int
    subscription_id: int
    plan_id: str
    sequence: int
    url: str
    secret: str
    webhook_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Attempt:
    """How one attempt went: the receiver's status (None when none answered) and an error, if any."""

    status_code: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        """Return True for a 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300


class DeliveryWorker(PollingWorker):
    """Drains due deliveries to their subscribers."""

    name = "delivery worker"

    def __init__(
        self,
        uow: UnitOfWork,
        settings: Settings,
        clock: Callable[[], datetime],
        guard: OutboundGuard | None = None,
        send: Sender = http.post,
    ) -> None:
        self.uow, self.settings, self.clock, self.send = uow, settings, clock, send
        self.guard = guard or OutboundGuard(settings.outbound_allow)
        self.poll_seconds = settings.worker_poll_seconds
        self.lease = timedelta(seconds=max(settings.outbox_lease_seconds, 2 * settings.delivery_timeout + 10))

    def _claim(self) -> Claimed | None:
        with self.uow:
            now = self.clock()
            row = self.uow.deliveries.claim_next(now)
            if row is None:
                return None
            row.next_attempt_at = now + self.lease
            subscription = self.uow.subscriptions.get(row.subscription_id)
            claimed = Claimed(
                row.id, row.subscription_id, row.plan_id, row.sequence, subscription.url, subscription.secret,
                row.webhook_id, row.payload,
            )  # fmt: skip
            self.uow.commit()
            return claimed

    def attempt(self, claimed: Claimed) -> Attempt:
        """Check the URL again, sign and POST the payload once; return how it went."""
        try:
            target = self.guard.check(claimed.url)
        except OutboundRefused as exc:
            return Attempt(None, f"refused: {exc.detail}")
        body = json.dumps(claimed.payload, separators=(",", ":"), sort_keys=True).encode()
        # Signed with the wall clock, not the scheduling clock: receivers check the timestamp against theirs.
        headers = sign_headers(claimed.secret, body, claimed.webhook_id, datetime.now(UTC))
        headers.update({"Content-Type": "application/json", "User-Agent": "planbridge-notify"})
        try:
            answer = self.send(target, body, headers, self.settings.delivery_timeout)
        except urllib3.exceptions.HTTPError as exc:
            kind = type(exc).__name__
            reason = "timed out" if isinstance(exc, urllib3.exceptions.TimeoutError) else "transport error"
            return Attempt(None, f"{kind}: {reason}")
        except Exception as exc:  # recorded on the delivery and retried, never lost with the lease
            log.exception("delivery %s: unexpected error", claimed.delivery_id)
            return Attempt(None, f"{type(exc).__name__}: unexpected error")
        if 200 <= answer.status < 300:
            return Attempt(answer.status, None)
        if 300 <= answer.status < 400:
            return Attempt(answer.status, f"redirect {answer.status} not followed")
        wait = retry_after_seconds(answer.retry_after, time.time()) if answer.status in (429, 503) else None
        return Attempt(answer.status, f"HTTP {answer.status}", None if wait is None else min(wait, RETRY_AFTER_CAP))

    def process_one(self) -> bool:
        """Attempt one due delivery; return False when none was due."""
        claimed = self._claim()
        if claimed is None:
            return False
        started = time.monotonic()
        result = self.attempt(claimed)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        with self.uow:
            row = self.uow.deliveries.find(claimed.delivery_id)
            if row is None:  # the subscription was deleted meanwhile
                return True
            now = self.clock()
            self.uow.deliveries.record_attempt(row, now, result.status_code, result.error, elapsed_ms)
            if result.delivered:
                self.uow.deliveries.mark_delivered(row, now)
            else:
                if result.status_code == 410:
                    subscription = self.uow.subscriptions.get(claimed.subscription_id)
                    reason = f"the endpoint answered 410 Gone at {now.isoformat()}"
                    self.uow.subscriptions.set_status(subscription, "disabled", reason, now)
                delay = backoff(row.attempts) if result.retry_after is None else timedelta(seconds=result.retry_after)
                self.uow.deliveries.mark_failed(row, self.settings.delivery_max_attempts, now + delay)
            status = row.status
            self.uow.commit()
        log.info(
            "delivery %s subscription %s plan %s sequence %s: %s (%s)",
            claimed.delivery_id, claimed.subscription_id, claimed.plan_id, claimed.sequence, status,
            result.status_code or (result.error or "").split(":")[0],
        )  # fmt: skip
        return True
