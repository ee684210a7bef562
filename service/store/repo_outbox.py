"""The outbox: pending pushes to the FHIR server."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from service.domain.errors import NotFound
from service.store.prepared import Prepared
from service.store.repo_common import _OUTBOX, _delete_oldest, _insert, _open_and_latest
from service.store.tables import OutboxRow

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

_THIS_ENTRY = _OUTBOX.c.id == sa.bindparam("id", type_=_OUTBOX.c.id.type)
_FINISH_UPDATE = (
    sa.update(_OUTBOX)
    .where(_THIS_ENTRY)
    .values(
        status=sa.literal_column("'done'"),
        attempts=_OUTBOX.c.attempts + sa.literal_column("1"),
        last_error=sa.null(),
        updated_at=sa.bindparam("now", type_=_OUTBOX.c.updated_at.type),
        claimed_at=sa.null(),
    )
)
_FINISH = Prepared(_FINISH_UPDATE)

# The same, only while one claim still holds the entry: its lease start (claimed_at) is the claim's token.
# A worker whose lease ran out and whose entry another worker claimed since must not finish it under that
# worker (nor release the plan's hold while the newer claim is still pushing).
_FINISH_HELD = Prepared(
    _FINISH_UPDATE.where(_OUTBOX.c.claimed_at == sa.bindparam("claimed_at", type_=_OUTBOX.c.claimed_at.type))
)
_EXISTS = Prepared(sa.select(_OUTBOX.c.id).where(_THIS_ENTRY))
# A heartbeat: move the lease's end while one claim still holds the entry. claimed_at (the token, and what
# `/plans/{id}/outbox` shows as when the worker took it) stays: a token that changed on each renewal would race
# the push's own finish, which names the token it read (on PostgreSQL a finish blocked behind a renewal re-reads
# the row after it commits and no longer matches).
_RENEW = Prepared(
    sa.update(_OUTBOX)
    .where(
        _THIS_ENTRY,
        _OUTBOX.c.status == sa.literal_column("'pending'"),
        _OUTBOX.c.claimed_at == sa.bindparam("claimed_at", type_=_OUTBOX.c.claimed_at.type),
    )
    .values(next_attempt_at=sa.bindparam("until", type_=_OUTBOX.c.next_attempt_at.type))
)

PUSH_KINDS = ("push_plan", "push_goal")  # outbox entries that write to the FHIR server


def _claim_next_query(*columns: Any) -> sa.Select[Any]:
    """The claim (see `OutboxRepository.claim_next`), built once: its one bind is `now`; it selects the
    entry, or only `columns` of it."""
    now = sa.bindparam("now", type_=OutboxRow.__table__.c.next_attempt_at.type)
    other = aliased(OutboxRow)
    # Constants are literals in the SQL (the worker's claim runs it as a Prepared statement: `now` is its bind).
    pending, push_kinds = sa.literal_column("'pending'"), [sa.literal_column(f"'{kind}'") for kind in PUSH_KINDS]
    # Each look at the plan's other entries goes by the plan_id index: `status || ''` keeps the planner off
    # the status index, which holds every pending entry (without table statistics, SQLite and PostgreSQL
    # took it, and a claim then read the whole queue once per due entry).
    other_pending = other.status.concat(sa.literal_column("''")) == pending
    # Whether the plan is held reads the held-plan index (its predicate written out as the index has it).
    plan_held = sa.select(other.id).where(
        other.plan_id == OutboxRow.plan_id,
        other.status == pending,
        other.claimed_at.is_not(None),
        other.id != OutboxRow.id,
    )
    # A push of a plan whose earlier push is backing off waits too: every team event queues a
    # push, and a refusal that retrying cannot fix must not be met again once per event.
    backing_off = sa.select(other.id).where(
        other.plan_id == OutboxRow.plan_id,
        other_pending,
        other.kind.in_(push_kinds),
        other.attempts > sa.literal_column("0"),
        other.next_attempt_at > now,
        other.id < OutboxRow.id,
    )
    # An earlier due entry of the plan is being claimed by another worker right now (SKIP LOCKED
    # passed over its locked row): a push must not overtake it, nor a re-read an earlier re-read.
    # (One worker alone never meets this: it takes the oldest first.)
    earlier_due = sa.select(other.id).where(
        other.plan_id == OutboxRow.plan_id,
        other_pending,
        other.next_attempt_at <= now,
        other.id < OutboxRow.id,
        sa.or_(OutboxRow.kind.in_(push_kinds), other.kind.not_in(push_kinds)),
    )
    query = (
        sa.select(*(columns or (OutboxRow,)))
        .where(
            OutboxRow.status == pending,
            # coalesce(x, x): the same value, but no index of its own, so the planner walks ix_outbox_pending
            # in id order and stops at the first entry it may take. Offered the next_attempt_at index too,
            # and without fresh table statistics, it read every due entry and sorted them, on each claim.
            sa.func.coalesce(OutboxRow.next_attempt_at, OutboxRow.next_attempt_at) <= now,
            ~plan_held.exists(),
            ~earlier_due.exists(),
            sa.or_(OutboxRow.kind.not_in(push_kinds), ~backing_off.exists()),
        )
        .order_by(OutboxRow.id)
        .limit(sa.literal_column("1"))
        .offset(sa.literal_column("0"))
        .with_for_update(skip_locked=True)
    )
    return query


_CLAIM_NEXT = _claim_next_query()
# The worker's claim: the same query for the four columns it needs, then the lease by id, each one statement
# on the driver (through the ORM, loading the row and flushing the lease cost about a millisecond a claim).
_CLAIM_COLUMNS = Prepared(_claim_next_query(OutboxRow.id, OutboxRow.plan_id, OutboxRow.kind, OutboxRow.subject_id))
_LEASE = Prepared(
    sa.update(_OUTBOX)
    .where(_THIS_ENTRY)
    .values(
        claimed_at=sa.bindparam("now", type_=_OUTBOX.c.claimed_at.type),
        next_attempt_at=sa.bindparam("until", type_=_OUTBOX.c.next_attempt_at.type),
    )
)


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
        return self._session.scalars(_CLAIM_NEXT, {"now": now}).first()

    def claim(self, now: datetime, seconds: float) -> tuple[int, str, str, str | None, datetime] | None:
        """Claim the entry `claim_next` would return and lease it as `lease` does, without loading it into the
        session; return its (id, plan id, kind, subject id) and the claim's token (its claimed_at, `now`: give
        it to `finish` and `held_by`), or None when nothing is due. An entry of a plan another worker leased at
        the same moment raises IntegrityError (the held-plan index)."""
        row = _CLAIM_COLUMNS.first(self._session, {"now": now})
        if row is None:
            return None
        _LEASE.execute(self._session, {"id": row[0], "now": now, "until": now + timedelta(seconds=seconds)})
        return (row[0], row[1], row[2], row[3], now)

    def lease(self, row: OutboxRow, now: datetime, seconds: float) -> None:
        """Hold a claimed entry for `seconds`: it comes due again then unless marked done or failed first.
        This starts a claim (claimed_at, its token, becomes `now`) and checks nothing: a worker renews the claim
        it holds with `renew`, which checks its token."""
        row.claimed_at, row.next_attempt_at = now, now + timedelta(seconds=seconds)

    def renew(self, entry_id: int, claimed_at: datetime, now: datetime, seconds: float) -> datetime | None:
        """Renew the lease of the claim made at `claimed_at` (its token) for `seconds` from `now`, in one UPDATE,
        only while that claim still holds the entry; return the lease's new end, or None when the claim is lost
        (a newer claim took the entry after this one's lease ran out, or it is finished, failed or gone).

        The token stays the claim's for its whole life, so `finish` and `held_by` take the one `claim` returned.
        A lease that ran out is renewed too while no other worker claimed the entry since: it is still this
        claim's, and no one else is pushing it. On PostgreSQL a renewal meeting a claim or a finish in progress
        waits for it and then finds the claim lost (or the entry finished)."""
        until = now + timedelta(seconds=seconds)
        if _RENEW.execute(self._session, {"id": entry_id, "claimed_at": claimed_at, "until": until}):
            return until
        return None

    def held_by(self, entry_id: int, claimed_at: datetime) -> OutboxRow | None:
        """Lock and return the entry if the claim made at `claimed_at` still holds it, else None (a newer claim
        took it after that one's lease ran out, or it is finished); NotFound when it is gone."""
        row = self._session.get(OutboxRow, entry_id, with_for_update=True, populate_existing=True)
        if row is None:
            raise NotFound(f"outbox entry {entry_id} does not exist", entry_id=entry_id)
        return row if row.status == "pending" and row.claimed_at == claimed_at else None

    def mark_done(self, row: OutboxRow, now: datetime) -> None:
        """Record a successful push."""
        row.status, row.attempts, row.last_error, row.updated_at = "done", row.attempts + 1, None, now
        row.claimed_at = None

    def finish(self, entry_id: int, now: datetime, claimed_at: datetime | None = None) -> bool:
        """Record a successful push of an entry by id, as `mark_done` does, in one UPDATE (no read first).
        With `claimed_at` (the claim's token), only while that claim still holds the entry: return False,
        leaving the entry alone, when a newer claim holds it or it is finished. NotFound when it is gone."""
        if claimed_at is None:
            if not _FINISH.execute(self._session, {"id": entry_id, "now": now}):
                raise NotFound(f"outbox entry {entry_id} does not exist", entry_id=entry_id)
            return True
        if _FINISH_HELD.execute(self._session, {"id": entry_id, "now": now, "claimed_at": claimed_at}):
            return True
        if _EXISTS.first(self._session, {"id": entry_id}) is None:
            raise NotFound(f"outbox entry {entry_id} does not exist", entry_id=entry_id)
        return False

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
