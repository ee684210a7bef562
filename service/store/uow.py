"""The unit of work: one database transaction, with the repositories that act inside it."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased, sessionmaker

from service.domain import codec
from service.domain.errors import Conflict, NotFound
from service.domain.model import Plan
from service.store.prepared import Prepared
from service.store.tables import (
    ConflictRow,
    DeliveryRow,
    FhirLinkRow,
    InboundEventRow,
    OutboxRow,
    PlanRow,
    PlanSequenceRow,
    SubscriptionRow,
    SyncCursorRow,
    SyncStateRow,
)

_PLANS = PlanRow.__table__
_EVENTS = InboundEventRow.__table__
_OUTBOX = OutboxRow.__table__
_SEQUENCES = PlanSequenceRow.__table__
_SUBSCRIPTIONS = SubscriptionRow.__table__
_DELIVERIES = DeliveryRow.__table__


def _insert(table: sa.Table, *names: str) -> Prepared:
    """INSERT of the named columns, each a bind of the same name."""
    return Prepared(sa.insert(table).values({name: sa.bindparam(name, type_=table.c[name].type) for name in names}))


# The statements every team event runs (see service/store/prepared.py for why they are prepared).
_PLAN_READ = Prepared(sa.select(_PLANS.c.document, _PLANS.c.version).where(_PLANS.c.id == sa.bindparam("id")))
_PLAN_INSERT = _insert(_PLANS, "id", "patient_mrn", "version", "document", "created_at", "updated_at")
_PLAN_UPDATE = Prepared(
    sa.update(_PLANS)
    .where(_PLANS.c.id == sa.bindparam("plan_id"), _PLANS.c.version == sa.bindparam("read_version"))
    .values(
        version=sa.bindparam("version", type_=_PLANS.c.version.type),
        document=sa.bindparam("document", type_=_PLANS.c.document.type),
        updated_at=sa.bindparam("updated_at", type_=_PLANS.c.updated_at.type),
    )
)
_EVENT_ANSWER = Prepared(
    sa.select(_EVENTS.c.body_sha256, _EVENTS.c.response_status, _EVENTS.c.response_body).where(
        _EVENTS.c.sender == sa.bindparam("sender"), _EVENTS.c.webhook_id == sa.bindparam("webhook_id")
    )
)
_EVENT_INSERT = _insert(_EVENTS, *(column.key for column in _EVENTS.columns))
_OUTBOX_INSERT = _insert(
    _OUTBOX,
    "plan_id",
    "kind",
    "subject_id",
    "event_id",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
)
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


PUSH_KINDS = ("push_plan", "push_goal")  # outbox entries that write to the FHIR server


class RecordedAnswer(NamedTuple):
    """What was answered to a webhook id, and a digest of the body it came with."""

    body_sha256: str
    response_status: int
    response_body: dict[str, Any]


class StaleVersion(Conflict):
    """Someone else saved the plan between our read and our write; the use case retries."""

    code = "stale-version"


def _instant(value: str | None) -> datetime | None:
    """Parse an ISO instant for the index columns; a partial or zone-less one is read as UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _open_and_latest(session: Session, row: Any, plan_id: str, finished: str, shown: int) -> tuple[list[Any], int]:
    """Return a plan's rows not in the `finished` status and its `shown` latest finished ones, oldest
    first, and how many older finished rows were left out (a page shows what needs a person first)."""
    of_plan, done = row.plan_id == plan_id, row.status == finished
    open_rows = list(session.scalars(sa.select(row).where(of_plan, ~done)))
    done_rows = list(session.scalars(sa.select(row).where(of_plan, done).order_by(row.id.desc()).limit(shown)))
    total_done = session.scalar(sa.select(sa.func.count()).select_from(row).where(of_plan, done))
    return sorted(open_rows + done_rows, key=lambda r: r.id), int(total_done or 0) - len(done_rows)


def _delete_oldest(session: Session, row: Any, *where: Any, batch: int) -> int:
    """Delete up to `batch` rows matching `where`, lowest ids first (one short statement); return how many."""
    ids = sa.select(row.id).where(*where).order_by(row.id).limit(batch).scalar_subquery()
    return int(session.execute(sa.delete(row).where(row.id.in_(ids))).rowcount or 0)


class PlanSummary(NamedTuple):
    """A plan as a list shows it: the plan, its sync status and when it last went either way."""

    plan: Plan
    sync_status: str
    last_synced: datetime | None


class PlanRepository:
    """Plans stored as versioned JSON documents."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._loaded: dict[str, int] = {}

    def get(self, plan_id: str) -> Plan | None:
        """Return the plan, remembering the version read for the optimistic check on save."""
        # Core statements, not ORM rows: the plan lives in its document, and skipping the ORM's
        # identity map and flush bookkeeping is most of the cost of a read-modify-write.
        row = _PLAN_READ.first(self._session, {"id": plan_id})
        if row is None:
            return None
        document, version = row
        plan = codec.from_dict(Plan, document)
        self._loaded[plan_id] = version
        return plan

    def ids(self) -> list[str]:
        """Return every plan id, sorted."""
        return list(self._session.scalars(sa.select(PlanRow.id).order_by(PlanRow.id)))

    def page(self, *, after: str = "", limit: int, sync_status: str | None = None) -> tuple[list[PlanSummary], int]:
        """Return up to `limit` plans with ids after `after`, in id order, with their sync state, and how
        many plans there are in all (with `sync_status`, only those; a plan never synced is pending)."""
        status = sa.func.coalesce(SyncStateRow.status, "pending")
        matching = sa.select(PlanRow.document, status, SyncStateRow.last_pushed_at, SyncStateRow.last_pulled_at)
        matching = matching.outerjoin(SyncStateRow, SyncStateRow.plan_id == PlanRow.id)
        if sync_status is not None:
            matching = matching.where(status == sync_status)
        counted = matching.with_only_columns(PlanRow.id).subquery()
        total = self._session.scalar(sa.select(sa.func.count()).select_from(counted))
        page = matching.where(PlanRow.id > after).order_by(PlanRow.id).limit(limit)
        summaries = [
            PlanSummary(codec.from_dict(Plan, document), state, max((t for t in (pushed, pulled) if t), default=None))
            for document, state, pushed, pulled in self._session.execute(page)
        ]
        return summaries, int(total or 0)

    def save(self, plan: Plan) -> None:
        """Insert a new plan or update one read earlier, refusing if it changed in between."""
        document = codec.to_dict(plan)
        assert plan.updated_at is not None, "touch() the plan first"
        updated_at = _instant(plan.updated_at) or datetime.now(UTC)
        created_at = _instant(plan.created_at) or updated_at
        if plan.id not in self._loaded:  # a duplicate id raises IntegrityError here, as a flush would
            _PLAN_INSERT.execute(
                self._session,
                {
                    "id": plan.id,
                    "patient_mrn": plan.patient.mrn,
                    "version": plan.version,
                    "document": document,
                    "created_at": created_at,
                    "updated_at": updated_at,
                },
            )
        else:
            changed = _PLAN_UPDATE.execute(
                self._session,
                {
                    "plan_id": plan.id,
                    "read_version": self._loaded[plan.id],
                    "version": plan.version,
                    "document": document,
                    "updated_at": updated_at,
                },
            )
            if changed != 1:
                raise StaleVersion(f"plan {plan.id} changed while this change was applied", plan_id=plan.id)
        self._loaded[plan.id] = plan.version


class InboundEventRepository:
    """Received team events, keyed by webhook id."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def answer(self, sender: str, webhook_id: str) -> RecordedAnswer | None:
        """Return the body digest and the answer recorded for this sender's webhook id (one SELECT), or None."""
        row = _EVENT_ANSWER.first(self._session, {"sender": sender, "webhook_id": webhook_id})
        return RecordedAnswer(*row) if row is not None else None

    def record(self, **values: Any) -> None:
        """Record an event (every column of InboundEventRow) with one INSERT; a duplicate id raises IntegrityError."""
        _EVENT_INSERT.execute(self._session, values)


class OutboxRepository:
    """Pending pushes to the FHIR server."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, plan_id: str, kind: str, subject_id: str | None, event_id: str | None, now: datetime) -> None:
        """Queue work, due now (one INSERT, sent at once)."""
        _OUTBOX_INSERT.execute(
            self._session,
            {
                "plan_id": plan_id,
                "kind": kind,
                "subject_id": subject_id,
                "event_id": event_id,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            },
        )

    def get(self, entry_id: int) -> OutboxRow:
        """Return an entry by id."""
        row = self._session.get(OutboxRow, entry_id)
        if row is None:
            raise NotFound(f"outbox entry {entry_id} does not exist", entry_id=entry_id)
        return row

    def claim_next(self, now: datetime) -> OutboxRow | None:
        """Lock and return the oldest due pending entry that no other worker holds, of a plan that no
        worker is working on (a held entry whose lease ran out is due again, and still its plan's)."""
        other = aliased(OutboxRow)
        plan_held = sa.select(other.id).where(
            other.plan_id == OutboxRow.plan_id,
            other.status == "pending",
            other.claimed_at.is_not(None),
            other.id != OutboxRow.id,
        )
        # A push of a plan whose earlier push is backing off waits too: every team event queues a
        # push, and a refusal that retrying cannot fix must not be met again once per event.
        backing_off = sa.select(other.id).where(
            other.plan_id == OutboxRow.plan_id,
            other.status == "pending",
            other.kind.in_(PUSH_KINDS),
            other.attempts > 0,
            other.next_attempt_at > now,
            other.id < OutboxRow.id,
        )
        query = (
            sa.select(OutboxRow)
            .where(
                OutboxRow.status == "pending",
                OutboxRow.next_attempt_at <= now,
                ~plan_held.exists(),
                sa.or_(OutboxRow.kind.not_in(PUSH_KINDS), ~backing_off.exists()),
            )
            .order_by(OutboxRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        return self._session.scalars(query).first()

    def lease(self, row: OutboxRow, now: datetime, seconds: float) -> None:
        """Hold a claimed entry for `seconds`: it comes due again then unless marked done or failed first."""
        row.claimed_at, row.next_attempt_at = now, now + timedelta(seconds=seconds)

    def mark_done(self, row: OutboxRow, now: datetime) -> None:
        """Record a successful push."""
        row.status, row.attempts, row.last_error, row.updated_at = "done", row.attempts + 1, None, now
        row.claimed_at = None

    def mark_failed(self, row: OutboxRow, error: str, now: datetime, max_attempts: int, delay: timedelta) -> None:
        """Record a failed push: retry later, or park it as dead after the last attempt."""
        row.attempts += 1
        row.last_error = error[:2000]
        row.updated_at, row.claimed_at = now, None
        if row.attempts >= max_attempts:
            row.status = "dead"
        else:
            row.next_attempt_at = now + delay

    def pending_exists(self, plan_id: str, kind: str, *, waiting_only: bool = False) -> bool:
        """Tell whether an entry of this kind for this plan is pending; with `waiting_only`, one no worker
        has started on (an entry in flight may already have read what a newer change replaces)."""
        query = sa.select(OutboxRow.id).where(
            OutboxRow.plan_id == plan_id, OutboxRow.kind == kind, OutboxRow.status == "pending"
        )
        if waiting_only:
            query = query.where(OutboxRow.claimed_at.is_(None))
        return self._session.scalars(query.limit(1)).first() is not None

    def replay(self, row: OutboxRow, now: datetime) -> None:
        """Queue a dead entry again, due now, with its attempts reset."""
        row.status, row.attempts, row.next_attempt_at, row.updated_at = "pending", 0, now, now
        row.claimed_at = None

    def prune_done(self, before: datetime, batch: int) -> int:
        """Delete up to `batch` done entries last touched before `before`, oldest first; return how many."""
        finished = OutboxRow.status == "done"
        return _delete_oldest(self._session, OutboxRow, finished, OutboxRow.updated_at < before, batch=batch)

    def for_plan(self, plan_id: str, done_shown: int) -> tuple[list[OutboxRow], int]:
        """Return a plan's entries not done (waiting or dead) and its `done_shown` latest done ones,
        oldest first, and how many older done entries were left out."""
        return _open_and_latest(self._session, OutboxRow, plan_id, "done", done_shown)

    def list(
        self, plan_id: str | None = None, status: str | None = None, *, after: int = 0, limit: int | None = None
    ) -> list[OutboxRow]:
        """Return entries with ids above `after`, oldest first, optionally filtered, at most `limit` of them."""
        query = sa.select(OutboxRow).where(OutboxRow.id > after).order_by(OutboxRow.id).limit(limit)
        if plan_id is not None:
            query = query.where(OutboxRow.plan_id == plan_id)
        if status is not None:
            query = query.where(OutboxRow.status == status)
        return list(self._session.scalars(query))


class FhirLinkRepository:
    """Which FHIR resource holds which internal thing, and the version last written."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._by_plan: dict[str, dict[str, FhirLinkRow]] = {}  # the links of each plan recorded in this transaction

    def get(self, plan_id: str, local_key: str) -> FhirLinkRow | None:
        """Return the link, or None when never synced."""
        return self._session.get(FhirLinkRow, (plan_id, local_key))

    def record(
        self, plan_id: str, local_key: str, resource_type: str, fhir_id: str, version_id: str | None, now: datetime
    ) -> None:
        """Insert or update a link; the plan's links are read once per transaction, not one by one."""
        links = self._by_plan.get(plan_id)
        row = links.get(local_key) if links is not None else None
        if links is None or (row is not None and row not in self._session):  # first use, or rolled back since
            links = self._by_plan[plan_id] = {link.local_key: link for link in self.for_plan(plan_id)}
            row = links.get(local_key)
        if row is None:
            row = links[local_key] = FhirLinkRow(plan_id=plan_id, local_key=local_key)
            self._session.add(row)
        row.resource_type, row.fhir_id, row.version_id, row.synced_at = resource_type, fhir_id, version_id, now

    def for_plan(self, plan_id: str) -> list[FhirLinkRow]:
        """Return every link of a plan."""
        return list(self._session.scalars(sa.select(FhirLinkRow).where(FhirLinkRow.plan_id == plan_id)))

    def forget(self, plan_id: str, local_keys: list[str]) -> None:
        """Drop links to resources the server no longer holds (deleted in the EHR)."""
        if not local_keys:
            return
        self._session.execute(
            sa.delete(FhirLinkRow).where(FhirLinkRow.plan_id == plan_id, FhirLinkRow.local_key.in_(local_keys))
        )
        self._by_plan.pop(plan_id, None)


class SyncRepository:
    """Each plan's sync state, its open conflicts, and named cursors."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def state(self, plan_id: str) -> SyncStateRow:
        """Return the plan's sync state, creating a `pending` one on first use."""
        row = self._session.get(SyncStateRow, plan_id)
        if row is None:
            row = SyncStateRow(plan_id=plan_id, status="pending")
            self._session.add(row)
        return row

    def states(self, status: str | None = None) -> list[SyncStateRow]:
        """Return every plan's sync state, optionally only those with `status`."""
        query = sa.select(SyncStateRow).order_by(SyncStateRow.plan_id)
        if status is not None:
            query = query.where(SyncStateRow.status == status)
        return list(self._session.scalars(query))

    def add_conflict(self, plan_id: str, path: str, base: Any, ours: Any, theirs: Any, now: datetime) -> ConflictRow:
        """Record an open conflict."""
        row = ConflictRow(
            plan_id=plan_id, path=path, base=base, ours=ours, theirs=theirs, status="open", created_at=now
        )
        self._session.add(row)
        self._session.flush()
        return row

    def conflicts(
        self, plan_id: str | None = None, status: str | None = "open", *, after: int = 0, limit: int | None = None
    ) -> list[ConflictRow]:
        """Return conflicts with ids above `after`, oldest first, at most `limit` of them."""
        query = sa.select(ConflictRow).where(ConflictRow.id > after).order_by(ConflictRow.id).limit(limit)
        if plan_id is not None:
            query = query.where(ConflictRow.plan_id == plan_id)
        if status is not None:
            query = query.where(ConflictRow.status == status)
        return list(self._session.scalars(query))

    def close_conflict(self, row: ConflictRow, resolution: str, now: datetime) -> None:
        """Mark a conflict resolved (`ours`, `theirs`, `value`, or `converged` when both sides came to agree)."""
        row.status, row.resolution, row.resolved_at = "resolved", resolution, now

    def open_conflict_counts(self, plan_ids: list[str]) -> dict[str, int]:
        """Return how many open conflicts each of these plans has (plans with none are left out)."""
        query = (
            sa.select(ConflictRow.plan_id, sa.func.count())
            .where(ConflictRow.status == "open", ConflictRow.plan_id.in_(plan_ids))
            .group_by(ConflictRow.plan_id)
        )
        return {plan_id: int(n) for plan_id, n in self._session.execute(query)}

    def conflict(self, conflict_id: int) -> ConflictRow:
        """Return one conflict by id."""
        row = self._session.get(ConflictRow, conflict_id)
        if row is None:
            raise NotFound(f"conflict {conflict_id} does not exist", conflict_id=conflict_id)
        return row

    def cursor(self, name: str) -> str | None:
        """Return a cursor's value, or None."""
        row = self._session.get(SyncCursorRow, name)
        return row.value if row else None

    def cursors(self, prefix: str) -> dict[str, str]:
        """Return every cursor whose name starts with `prefix`."""
        rows = self._session.scalars(sa.select(SyncCursorRow).where(SyncCursorRow.name.startswith(prefix)))
        return {row.name: row.value for row in rows}

    def set_cursor(self, name: str, value: str) -> None:
        """Move a cursor."""
        row = self._session.get(SyncCursorRow, name)
        if row is None:
            self._session.add(SyncCursorRow(name=name, value=value))
        else:
            row.value = value


MAX_ROW_ID = 2**31 - 1  # an INTEGER column on PostgreSQL; larger ids cannot exist


class SubscriptionRepository:
    """Team systems subscribed to plan changes."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(
        self, url: str, event_types: list[str], secret: str, description: str | None, now: datetime
    ) -> SubscriptionRow:
        """Register an active subscription and return it with its id."""
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
        rows = _ACTIVE_SUBSCRIPTIONS.all(self._session, {"status": "active"})
        return [sub_id for sub_id, types in rows if "*" in types or event_type in types]

    def set_status(self, row: SubscriptionRow, status: str, reason: str | None, now: datetime) -> None:
        """Enable or disable a subscription, with the reason it was disabled."""
        row.status, row.disabled_reason, row.updated_at = status, reason, now

    def delete(self, row: SubscriptionRow) -> None:
        """Remove a subscription and its delivery log."""
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
        return self._session.scalars(query).first()

    def lease(self, row: DeliveryRow, now: datetime, until: datetime) -> None:
        """Hold a claimed delivery until `until`: it comes due again then unless its attempt is recorded first."""
        row.claimed_at, row.next_attempt_at = now, until

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


_FACTORIES: weakref.WeakKeyDictionary[Engine, sessionmaker[Session]] = weakref.WeakKeyDictionary()


def _session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return the engine's one session factory (making one per unit of work costs a request ~0.1 ms)."""
    factory = _FACTORIES.get(engine)
    if factory is None:
        factory = _FACTORIES[engine] = sessionmaker(bind=engine, expire_on_commit=False)
    return factory


class UnitOfWork:
    """`with uow:` opens a transaction; `uow.commit()` makes it durable; leaving without commit rolls back."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._factory = _session_factory(engine)
        self.session: Session | None = None

    def __enter__(self) -> UnitOfWork:
        self.session = self._factory()
        self._open_repositories()
        return self

    def _open_repositories(self) -> None:
        assert self.session is not None
        self.plans = PlanRepository(self.session)
        self.events = InboundEventRepository(self.session)
        self.outbox = OutboxRepository(self.session)
        self.links = FhirLinkRepository(self.session)
        self.sync = SyncRepository(self.session)
        self.subscriptions = SubscriptionRepository(self.session)
        self.deliveries = DeliveryRepository(self.session)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: if the block raises, what it wrote is undone and the outer one goes on.

        SAVEPOINT is sent straight to the driver (the ORM's begin_nested costs more than the event it
        guards), so it is for the repositories' statements: ORM objects the block changed are not
        restored, and the repositories forget the versions they read.
        """
        assert self.session is not None
        self.session.flush()  # ORM changes made before the block belong to the outer transaction
        cursor = self.session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("SAVEPOINT work")
            try:
                yield
            except BaseException:
                cursor.execute("ROLLBACK TO SAVEPOINT work")
                cursor.execute("RELEASE SAVEPOINT work")
                self._open_repositories()
                raise
            cursor.execute("RELEASE SAVEPOINT work")
        finally:
            cursor.close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.session is not None
        # close() rolls back whatever was not committed and detaches rows without expiring them,
        # so values read inside the block stay readable after it.
        self.session.close()
        self.session = None

    def commit(self) -> None:
        """Commit the transaction."""
        assert self.session is not None
        self.session.commit()

    def flush(self) -> None:
        """Send pending changes to the database inside the transaction."""
        assert self.session is not None
        self.session.flush()

    def rollback(self) -> None:
        """Throw away what this transaction did."""
        assert self.session is not None
        self.session.rollback()


def row_dict(row: Any, *names: str) -> dict[str, Any]:
    """Return the named attributes of a row as a dict (for API answers and CLI output)."""
    return {name: getattr(row, name) for name in names}
