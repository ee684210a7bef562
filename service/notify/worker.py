"""The delivery worker: POSTs each plan change to its subscribers, signed, in order, with retries.

Subscribers are served side by side: the worker claims due deliveries and hands each to a bounded pool
of sender threads (`PLANBRIDGE_DELIVERY_CONCURRENCY`), at most one delivery in flight per subscription,
so an endpoint that is slow, failing or gone holds one sender and delays only itself. Like the outbox
worker, a delivery is claimed by moving its due time one lease ahead in a short transaction (SKIP
LOCKED on PostgreSQL, where several workers may run), so no lock is held while the receiver answers;
and like the outbox worker, the lease is renewed every third of a lease while the attempt is under way
(service.notify.leases), so an attempt that outlives its lease (a slow DNS answer before the POST, a
database that is slow to record it) is never claimed by a second worker meanwhile, which would send the
change twice at once, or let the subscription's next change overtake it. The claim's claimed_at is its
token: an attempt is recorded only while its claim still holds the delivery (a worker that stalled past
its lease, whose delivery another worker claimed since, leaves its outcome out).
One plan's deliveries to one subscription go strictly in sequence order (see
DeliveryRepository.claim_next). Every retry carries the same `webhook-id`; a receiver dedupes on it (a
worker killed after sending but before recording sends again after the lease: at least once, never out
of order).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3

from service.fhir.client import retry_after_seconds
from service.notify import http
from service.notify.leases import Hold, Leases
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
    secret: str  # the current one; with `previous_secret`, while a rotation's grace period lasts
    webhook_id: str
    payload: dict[str, Any]
    claimed_at: datetime | None = None  # the claim's token (its lease start), None when not claimed
    previous_secret: str | None = None  # the secret a rotation replaced, still signing (POST .../rotate-secret)


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
    """Sends due deliveries to their subscribers, several subscribers at once."""

    name = "delivery worker"

    def __init__(
        self,
        uow: UnitOfWork,
        settings: Settings,
        clock: Callable[[], datetime],
        guard: OutboundGuard | None = None,
        send: Sender = http.post,
        concurrency: int | None = None,
    ) -> None:
        self.uow, self.settings, self.clock, self.send = uow, settings, clock, send
        self.guard = guard or OutboundGuard(settings.outbound_allow)
        self.poll_seconds = settings.worker_poll_seconds
        self.lease = timedelta(seconds=max(settings.outbox_lease_seconds, 2 * settings.delivery_timeout + 10))
        self.concurrency = max(1, concurrency or settings.delivery_concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: dict[Future[None], Claimed] = {}
        self._dispatch = threading.Lock()  # one dispatcher at a time per worker
        self._leases = Leases(uow.engine, lambda: self.clock(), self.lease, self.poll_seconds)

    def _unit(self) -> UnitOfWork:
        """A unit of work of its own (a UnitOfWork holds one session: one per thread)."""
        return UnitOfWork(self.uow.engine)

    def _claim(self, busy: frozenset[int] = frozenset()) -> Claimed | None:
        with self.uow:
            now = self.clock()
            row = self.uow.deliveries.claim_next(now, busy)
            if row is None:
                return None
            self.uow.deliveries.lease(row, now, now + self.lease)
            subscription = self.uow.subscriptions.get(row.subscription_id)
            secret, *previous = self.uow.subscriptions.signing_secrets(subscription, now)
            claimed = Claimed(
                row.id, row.subscription_id, row.plan_id, row.sequence, subscription.url, secret,
                row.webhook_id, row.payload, now, previous[0] if previous else None,
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
        at = datetime.now(UTC)
        headers = sign_headers(claimed.secret, body, claimed.webhook_id, at)
        if claimed.previous_secret:  # a rotation's grace period: both signatures, space-separated (Standard Webhooks)
            also = sign_headers(claimed.previous_secret, body, claimed.webhook_id, at)["webhook-signature"]
            headers["webhook-signature"] = f"{headers['webhook-signature']} {also}"
        headers.update({"Content-Type": "application/json", "User-Agent": "planbridge-notify"})
        try:
            answer = self.send(target, body, headers, self.settings.delivery_timeout)
        except urllib3.exceptions.HTTPError as exc:
            return Attempt(None, http.transport_error(exc))
        except Exception as exc:  # recorded on the delivery and retried, never lost with the lease
            log.exception("delivery %s: unexpected error", claimed.delivery_id)
            return Attempt(None, f"{type(exc).__name__}: unexpected error")
        if 200 <= answer.status < 300:
            return Attempt(answer.status, None)
        if 300 <= answer.status < 400:
            return Attempt(answer.status, f"redirect {answer.status} not followed")
        wait = retry_after_seconds(answer.retry_after, time.time()) if answer.status in (429, 503) else None
        if wait is not None:  # `Retry-After: 0` (or a date gone by) is no licence to retry at once: a storm
            wait = min(max(wait, BACKOFF_FLOOR), RETRY_AFTER_CAP)
        return Attempt(answer.status, f"HTTP {answer.status}", wait)

    def renew_leases(self) -> int:
        """Renew the lease of every attempt in flight whose lease is a third of a lease old or more by the
        worker's clock; return how many were renewed. The renewal thread does this by real time on its own;
        this is for a clock moved by hand (tests)."""
        return self._leases.renew_due(by_clock=True)

    def deliver(self, claimed: Claimed) -> None:
        """Attempt one claimed delivery, its lease renewed meanwhile, and record how it went (in a unit of
        work of its own), only while its claim still holds the delivery."""
        hold = self._leases.hold(claimed.delivery_id, claimed.claimed_at) if claimed.claimed_at else None
        try:
            self._deliver_held(claimed, hold)
        finally:
            if hold is not None:
                self._leases.release(hold)

    def _deliver_held(self, claimed: Claimed, hold: Hold | None) -> None:
        started = time.monotonic()
        result = self.attempt(claimed)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        if hold is not None:
            self._leases.settle(hold)
        with self._unit() as uow:
            if claimed.claimed_at is None:  # not claimed through `_claim` (a caller's own): no token to check
                row = uow.deliveries.find(claimed.delivery_id)
                row = row if row is not None and row.webhook_id == claimed.webhook_id else None
            else:
                row = uow.deliveries.held_by(claimed.delivery_id, claimed.webhook_id, claimed.claimed_at)
            # Deleted meanwhile with its subscription (on SQLite a delivery queued since may have taken its
            # id: the webhook id, unique for ever, tells it is still the one sent), or claimed by another
            # worker after this claim's lease ran out: that claim's attempt records its own outcome.
            if row is None:
                again = uow.deliveries.find(claimed.delivery_id) if claimed.claimed_at is not None else None
                if again is not None and again.webhook_id == claimed.webhook_id:
                    log.warning(
                        "delivery %s subscription %s: its lease ran out and another worker claimed it meanwhile; "
                        "this attempt's outcome is left out",
                        claimed.delivery_id, claimed.subscription_id,
                    )  # fmt: skip
                return
            now = self.clock()
            uow.deliveries.record_attempt(row, now, result.status_code, result.error, elapsed_ms)
            if result.delivered:
                uow.deliveries.mark_delivered(row, now)
            else:
                if result.status_code == 410:
                    subscription = uow.subscriptions.get(claimed.subscription_id)
                    reason = f"the endpoint answered 410 Gone at {now.isoformat()}"
                    uow.subscriptions.set_status(subscription, "disabled", reason, now)
                # A replay starts a full set of attempts, and the backoff with it (not at the ceiling its
                # earlier attempts reached).
                since_replay = row.attempts - (row.attempts_before_replay or 0)
                delay = backoff(since_replay) if result.retry_after is None else timedelta(seconds=result.retry_after)
                uow.deliveries.mark_failed(row, self.settings.delivery_max_attempts, now + delay)
            status = row.status
            uow.commit()
        log.info(
            "delivery %s subscription %s plan %s sequence %s: %s (%s)",
            claimed.delivery_id, claimed.subscription_id, claimed.plan_id, claimed.sequence, status,
            result.status_code or (result.error or "").split(":")[0],
        )  # fmt: skip

    def _deliver_safely(self, claimed: Claimed) -> None:
        try:
            self.deliver(claimed)
        except Exception:  # e.g. the database went away: the lease runs out and the delivery is sent again
            log.exception("delivery %s: its attempt could not be recorded", claimed.delivery_id)

    def process_one(self) -> bool:
        """Attempt one due delivery in this thread; return False when none was due."""
        claimed = self._claim()
        if claimed is None:
            return False
        self._deliver_safely(claimed)
        return True

    def _fill(self) -> int:
        """Hand due deliveries to free senders, one per subscription; return how many were handed out."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="planbridge-delivery")
        handed = 0
        while len(self._in_flight) < self.concurrency:
            busy = frozenset(c.subscription_id for c in self._in_flight.values())
            claimed = self._claim(busy)
            if claimed is None:
                break
            self._in_flight[self._pool.submit(self._deliver_safely, claimed)] = claimed
            handed += 1
        return handed

    def _settle(self, timeout: float | None) -> int:
        """Wait up to `timeout` (None: for ever) for a sender to finish; return how many have finished."""
        if not self._in_flight:
            return 0
        done, _ = wait(list(self._in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            del self._in_flight[future]
        return len(done)

    def run_until_idle(self, limit: int = 10_000) -> int:
        """Send what is due, several subscribers at once, until nothing is due or in flight; return how
        many attempts were made (at most about `limit` handed out)."""
        with self._dispatch:
            handed = finished = 0
            try:
                while True:
                    if handed < limit:
                        handed += self._fill()
                    if not self._in_flight:
                        return finished
                    finished += self._settle(None)
            finally:
                while self._in_flight:  # a failed claim must not leave senders unaccounted for
                    self._settle(None)
                self.close()

    def run_forever(self, stop: threading.Event) -> None:
        """Send due deliveries until `stop` is set, looking for new ones whenever a sender frees up and at
        least every `poll_seconds`; on stop, wait for the attempts under way to be recorded."""
        log.info("%s started (%s senders)", self.name, self.concurrency)
        with self._dispatch:
            try:
                while not stop.is_set():
                    try:
                        self._fill()
                    except Exception:  # the worker must outlive any single failure; the next poll retries
                        log.exception("%s pass failed", self.name)
                    if self._in_flight:
                        self._settle(self.poll_seconds)
                    else:
                        stop.wait(self.poll_seconds)
            finally:
                while self._in_flight:
                    self._settle(None)
                self.close()
        log.info("%s stopped", self.name)

    def close(self) -> None:
        """Let the sender threads go (after the attempts under way), and stop renewing leases."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._leases.stop()
