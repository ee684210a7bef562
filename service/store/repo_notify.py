"""Subscriptions of team systems to plan changes, and the deliveries of those changes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from service.domain.errors import NotFound
from service.domain.model import Plan
from service.store.prepared import Prepared
from service.store.repo_common import _DELIVERIES, _SEQUENCES, _SUBSCRIPTIONS, _delete_oldest, _insert, _open_and_latest
from service.store.repo_plans import _PLAN_READ
from service.store.tables import DeliveryRow, SubscriptionRow

_ACTIVE_SUBSCRIPTIONS = Prepared(
    sa.select(_SUBSCRIPTIONS.c.id, _SUBSCRIPTIONS.c.event_types).where(
        _SUBSCRIPTIONS.c.status == sa.bindparam("status")
    )
)
_DELIVERY_INSERT = _insert(
    _DELIVERIES,
    "subscription_id",
    "plan_id",
    "sequence",
    "event_type",
    "payload",
    "webhook_id",
    "status",
    "attempts",
    "next_attempt_at",
    "attempt_log",
    "created_at",
)


def _next_sequence(insert: Any) -> Prepared:
    # One statement: insert the plan's counter at 1, or bump the existing one, and read it back.
    return Prepared(
        insert(_SEQUENCES)
        .values(plan_id=sa.bindparam("plan_id", type_=_SEQUENCES.c.plan_id.type), last_sequence=sa.literal_column("1"))
        .on_conflict_do_update(
            index_elements=[_SEQUENCES.c.plan_id],
            set_={"last_sequence": _SEQUENCES.c.last_sequence + sa.literal_column("1")},
        )
        .returning(_SEQUENCES.c.last_sequence)
    )


_NEXT_SEQUENCE = {"postgresql": _next_sequence(postgresql.insert), "sqlite": _next_sequence(sqlite.insert)}


MAX_ROW_ID = 2**31 - 1  # an INTEGER column on PostgreSQL; larger ids cannot exist


class SubscriptionRepository:
    """Team systems subscribed to plan changes."""

    def __init__(self, session: Session) -> None:
        self._session = session
        # The active subscriptions as this transaction read them, for `wanting`: every change of a group commit
        # asks (service.store.committer), and none of them changes a subscription. Forgotten by every change
        # made here, and with the transaction it was read in.
        self._active: tuple[Any, list[tuple[int, list[str]]]] | None = None

    def add(
        self, url: str, event_types: list[str], secret: str, description: str | None, now: datetime
    ) -> SubscriptionRow:
        """Register an active subscription and return it with its id."""
        self._active = None
        row = SubscriptionRow(
            url=url,
            event_types=event_types,
            secret=secret,
            status="active",
            description=description,
            created_at=now,
            updated_at=now,
        )
        self._session.add(row)
        self._session.flush()
        return row

    def get(self, subscription_id: int) -> SubscriptionRow:
        """Return a subscription by id."""
        row = self._session.get(SubscriptionRow, subscription_id) if 0 < subscription_id <= MAX_ROW_ID else None
        if row is None:
            raise NotFound(f"subscription {subscription_id} does not exist", subscription_id=subscription_id)
        return row

    def list(self, status: str | None = None) -> list[SubscriptionRow]:
        """Return subscriptions, oldest first."""
        query = sa.select(SubscriptionRow).order_by(SubscriptionRow.id)
        if status is not None:
            query = query.where(SubscriptionRow.status == status)
        return list(self._session.scalars(query))

    def wanting(self, event_type: str) -> list[int]:
        """Return the ids of active subscriptions that want this event type (a list naming it, or ["*"])."""
        transaction = self._session.get_transaction()
        if self._active is None or transaction is None or self._active[0] is not transaction:
            rows = _ACTIVE_SUBSCRIPTIONS.all(self._session, {"status": "active"})
            self._active = (transaction or self._session.get_transaction(), rows)  # the query may have begun one
        return [sub_id for sub_id, types in self._active[1] if "*" in types or event_type in types]

    def set_status(self, row: SubscriptionRow, status: str, reason: str | None, now: datetime) -> None:
        """Enable or disable a subscription, with the reason it was disabled."""
        self._active = None
        row.status, row.disabled_reason, row.updated_at = status, reason, now

    def rotate_secret(self, row: SubscriptionRow, secret: str, now: datetime, until: datetime) -> None:
        """Give the subscription a new signing secret; the one it replaces signs deliveries too until `until`
        (none when `until` is not after `now`). Only the current secret and the one before are kept: a second
        rotation within the grace period retires the oldest at once."""
        self._active = None
        row.previous_secret, row.previous_secret_until = (row.secret, until) if until > now else (None, None)
        row.secret, row.updated_at = secret, now

    @staticmethod
    def signing_secrets(row: SubscriptionRow, now: datetime) -> tuple[str, ...]:
        """Return the secrets a delivery is signed with at `now`: the current one, then the one a rotation
        replaced while its grace period lasts."""
        previous = row.previous_secret
        if previous and row.previous_secret_until is not None and now < row.previous_secret_until:
            return (row.secret, previous)
        return (row.secret,)

    def delete(self, row: SubscriptionRow) -> None:
        """Remove a subscription and its delivery log."""
        self._active = None
        self._session.execute(sa.delete(DeliveryRow).where(DeliveryRow.subscription_id == row.id))
        self._session.delete(row)
        self._session.flush()


DELIVERY_LOG_LENGTH = 50
OPEN_DELIVERY = ("pending", "failed")


class DeliveryRepository:
    """Plan changes waiting for (or done with) delivery to subscribers, and each plan's change counter.

    A delivery is `pending` (never tried, or replayed), `failed` (tried, retried later), `delivered`,
    `dead` (out of attempts) or `skipped` (a person gave up on it). While a worker sends it, `claimed_at`
    is set and `next_attempt_at` is the end of the worker's lease. `attempts` counts every attempt made,
    as the attempt log numbers them; `attempts_before_replay` marks where the latest replay began.
    """

    ORDERINGS = ("best-effort", "strict")

    def __init__(self, session: Session) -> None:
        self._session = session
        # The plan as it was before a change applied in this unit of work, by plan id (the team-event use
        # case notes it when it reads the plan), so the change log can name the paths the change touched.
        self.plans_before: dict[str, Plan | None] = {}

    def for_plan(self, plan_id: str, delivered_shown: int) -> tuple[list[DeliveryRow], int]:
        """Return a plan's deliveries not yet delivered (open, dead or skipped) and its `delivered_shown`
        latest delivered ones, oldest first, and how many older delivered ones were left out."""
        return _open_and_latest(self._session, DeliveryRow, plan_id, "delivered", delivered_shown)

    def prune_delivered(self, before: datetime, batch: int) -> int:
        """Delete up to `batch` deliveries delivered before `before`, oldest first; return how many."""
        finished = DeliveryRow.status == "delivered"
        return _delete_oldest(self._session, DeliveryRow, finished, DeliveryRow.delivered_at < before, batch=batch)

    def next_sequence(self, plan_id: str) -> int:
        """Take the plan's next change number; the row lock it takes orders concurrent writers of one plan."""
        dialect = self._session.get_bind().dialect.name
        return int(_NEXT_SEQUENCE[dialect].all(self._session, {"plan_id": plan_id})[0][0])

    def plan_document(self, plan_id: str) -> dict[str, Any] | None:
        """Return the plan's stored document as this transaction sees it (None when there is no such plan)."""
        row = _PLAN_READ.first(self._session, {"id": plan_id})
        return None if row is None else dict(row[0])

    def queue(self, rows: list[dict[str, Any]]) -> None:
        """Queue deliveries (each a dict of DeliveryRow's columns but its id) with one statement."""
        _DELIVERY_INSERT.executemany(self._session, rows)

    def get(self, delivery_id: int) -> DeliveryRow:
        """Return a delivery by id."""
        row = self.find(delivery_id)
        if row is None:
            raise NotFound(f"delivery {delivery_id} does not exist", delivery_id=delivery_id)
        return row

    def find(self, delivery_id: int) -> DeliveryRow | None:
        """Return a delivery by id, or None (its subscription may have been deleted meanwhile)."""
        return self._session.get(DeliveryRow, delivery_id) if 0 < delivery_id <= MAX_ROW_ID else None

    def claim_next(self, now: datetime, busy: frozenset[int] | set[int] = frozenset()) -> DeliveryRow | None:
        """Lock and return the next due open delivery to send: of an active subscription that has no
        delivery in flight (and is not in `busy`, the subscriptions the caller is sending to), and that
        no earlier delivery of its plan to its subscription holds back.

        Deliveries of one plan to one subscription go strictly in sequence order: a change waits while an
        earlier one is pending or failed, and, for a subscription whose ordering is `strict`, while an
        earlier one is dead (until it is replayed or skipped). One subscription has at most one delivery
        in flight, so a slow endpoint holds one sender, never the others' turn. On PostgreSQL the delivery
        and its subscription are locked SKIP LOCKED, so concurrent workers never take the same delivery or
        two deliveries of one subscription at once.
        """
        earlier = aliased(DeliveryRow)
        holding = sa.or_(
            earlier.status.in_(OPEN_DELIVERY), sa.and_(earlier.status == "dead", SubscriptionRow.ordering == "strict")
        )
        held_back = (
            sa.select(earlier.id)
            .where(
                earlier.subscription_id == DeliveryRow.subscription_id,
                earlier.plan_id == DeliveryRow.plan_id,
                earlier.sequence < DeliveryRow.sequence,
                holding,
            )
            .exists()
        )
        sending = aliased(DeliveryRow)
        in_flight = (
            sa.select(sending.id)
            .where(
                sending.subscription_id == DeliveryRow.subscription_id,
                sending.claimed_at.is_not(None),
                sending.next_attempt_at > now,
                sending.status.in_(OPEN_DELIVERY),
            )
            .exists()
        )
        query = (
            sa.select(DeliveryRow)
            .join(SubscriptionRow, SubscriptionRow.id == DeliveryRow.subscription_id)
            .where(
                DeliveryRow.status.in_(OPEN_DELIVERY),
                DeliveryRow.next_attempt_at <= now,
                SubscriptionRow.status == "active",
                ~held_back,
                ~in_flight,
            )
        )
        if busy:
            query = query.where(DeliveryRow.subscription_id.not_in(sorted(busy)))
        query = (
            query.order_by(DeliveryRow.next_attempt_at, DeliveryRow.id)
            .limit(1)
            .with_for_update(skip_locked=True, key_share=True, of=(DeliveryRow, SubscriptionRow))
        )
        row = self._session.scalars(query).first()
        if row is not None and self._session.get_bind().dialect.name == "postgresql":
            # The lock can be granted just after another worker committed its claim on this subscription;
            # the query above then judged "nothing in flight" by a snapshot taken before that commit.
            # A new statement sees the commit: one delivery in flight per subscription, across workers.
            claimed = sa.select(DeliveryRow.id).where(
                DeliveryRow.subscription_id == row.subscription_id,
                DeliveryRow.id != row.id,
                DeliveryRow.claimed_at.is_not(None),
                DeliveryRow.next_attempt_at > now,
                DeliveryRow.status.in_(OPEN_DELIVERY),
            )
            if self._session.scalar(sa.select(claimed.exists())):
                return None
        return row

    def lease(self, row: DeliveryRow, now: datetime, until: datetime) -> None:
        """Hold a claimed delivery until `until`: it comes due again then unless its attempt is recorded first.
        This starts a claim: `claimed_at`, set to `now`, is the claim's token (`renew`, `held_by`)."""
        row.claimed_at, row.next_attempt_at = now, until

    def renew(self, delivery_id: int, claimed_at: datetime, until: datetime) -> bool:
        """Move the end of the lease of the claim made at `claimed_at` (its token) to `until`, in one UPDATE,
        only while that claim still holds the delivery; return False when the claim is lost (another worker
        claimed the delivery after this claim's lease ran out, or its attempt is recorded, or it is gone).
        A lease that ran out is renewed too while no one claimed the delivery since: it is still this claim's."""
        result = self._session.execute(
            sa.update(DeliveryRow)
            .where(
                DeliveryRow.id == delivery_id,
                DeliveryRow.claimed_at == claimed_at,
                DeliveryRow.status.in_(OPEN_DELIVERY),
            )
            .values(next_attempt_at=until)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)

    def held_by(self, delivery_id: int, webhook_id: str, claimed_at: datetime) -> DeliveryRow | None:
        """Lock and return the delivery while the claim made at `claimed_at` still holds it (the attempt of that
        claim may be recorded on it), else None: gone (deleted with its subscription; on SQLite a later
        delivery may have taken its id, which its webhook id tells), or claimed again by another worker after
        this claim's lease ran out."""
        if not 0 < delivery_id <= MAX_ROW_ID:
            return None
        row = self._session.get(DeliveryRow, delivery_id, with_for_update=True, populate_existing=True)
        if row is None or row.webhook_id != webhook_id or row.claimed_at != claimed_at:
            return None
        return row

    @staticmethod
    def in_flight(row: DeliveryRow, now: datetime) -> bool:
        """Tell whether a worker is sending this delivery now (claimed, and its lease has not run out)."""
        return row.claimed_at is not None and row.next_attempt_at > now and row.status in OPEN_DELIVERY

    def record_attempt(
        self, row: DeliveryRow, now: datetime, status_code: int | None, error: str | None, duration_ms: int
    ) -> None:
        """Count an attempt and log it on the row, numbered as `attempts` counts (status code and error
        only, never a body); the worker's claim ends."""
        row.attempts += 1
        row.claimed_at = None
        row.last_status_code, row.last_error = status_code, (error[:2000] if error else None)
        entry = {
            "attempt": row.attempts,
            "at": now.isoformat(),
            "status_code": status_code,
            "error": row.last_error,
            "ms": duration_ms,
        }
        row.attempt_log = [*(row.attempt_log or []), entry][-DELIVERY_LOG_LENGTH:]

    def mark_delivered(self, row: DeliveryRow, now: datetime) -> None:
        """Record a 2xx answer."""
        row.status, row.delivered_at, row.claimed_at = "delivered", now, None

    def mark_failed(self, row: DeliveryRow, max_attempts: int, retry_at: datetime) -> None:
        """Retry at `retry_at`, or park the delivery as dead once it has used its attempts since the
        latest replay (a delivery someone skipped meanwhile stays skipped)."""
        row.claimed_at = None
        if row.status == "skipped":
            return
        if row.attempts - (row.attempts_before_replay or 0) >= max_attempts:
            row.status = "dead"
        else:
            row.status, row.next_attempt_at = "failed", retry_at

    def replay(self, row: DeliveryRow, now: datetime) -> None:
        """Queue a dead or failed delivery again, due now, with a full set of attempts; the attempt count
        and the log go on (a replay is not an attempt)."""
        row.status, row.next_attempt_at, row.claimed_at = "pending", now, None
        row.attempts_before_replay = row.attempts

    def skip(self, row: DeliveryRow) -> None:
        """Give up on a dead or failed delivery: it is not sent again and holds nothing back."""
        row.status, row.claimed_at = "skipped", None

    def rearm(self, subscription_id: int, now: datetime) -> None:
        """Make a subscription's open deliveries due now (when it is enabled again); one being sent stays
        with its worker."""
        self._session.execute(
            sa.update(DeliveryRow)
            .where(
                DeliveryRow.subscription_id == subscription_id,
                DeliveryRow.status.in_(OPEN_DELIVERY),
                sa.or_(DeliveryRow.claimed_at.is_(None), DeliveryRow.next_attempt_at <= now),
            )
            .values(next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )

    def list(
        self,
        subscription_id: int | None = None,
        status: str | None = None,
        plan_id: str | None = None,
        limit: int = 200,
        after: int = 0,
    ) -> list[DeliveryRow]:
        """Return deliveries with ids above `after`, oldest first, optionally filtered."""
        query = sa.select(DeliveryRow).where(DeliveryRow.id > after).order_by(DeliveryRow.id).limit(limit)
        if subscription_id is not None:
            query = query.where(DeliveryRow.subscription_id == subscription_id)
        if status is not None:
            query = query.where(DeliveryRow.status == status)
        if plan_id is not None:
            query = query.where(DeliveryRow.plan_id == plan_id)
        return list(self._session.scalars(query))
