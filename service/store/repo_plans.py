"""Plans stored as versioned JSON documents, and the received team events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.domain import codec
from service.domain.errors import Conflict
from service.domain.model import Plan
from service.store.prepared import Prepared
from service.store.repo_common import _EVENTS, _PLANS, _insert, _instant
from service.store.tables import PlanRow, SyncStateRow

# The statements every team event runs (see service/store/prepared.py for why they are prepared).
# Another plan whose id equals `id` but for case (`folded`: `id` in lower case), through ix_plans_id_folded.
_PLAN_TWIN = Prepared(
    sa.select(_PLANS.c.id).where(
        sa.func.lower(_PLANS.c.id) == sa.bindparam("folded"), _PLANS.c.id != sa.bindparam("id")
    )
)  # no LIMIT (a Prepared statement takes no literal binds): the rule leaves at most one such plan
_PLAN_READ = Prepared(sa.select(_PLANS.c.document, _PLANS.c.version).where(_PLANS.c.id == sa.bindparam("id")))
_PLAN_FOLDED = Prepared(sa.select(_PLANS.c.id).where(sa.func.lower(_PLANS.c.id) == sa.bindparam("folded")))
# PostgreSQL: a lock, held to the end of the transaction, on a plan id folded to lower case (see _hold_folded).
_FOLD_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
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


class RecordedAnswer(NamedTuple):
    """What was answered to a webhook id, and a digest of the body it came with."""

    body_sha256: str
    response_status: int
    response_body: dict[str, Any]


class StaleVersion(Conflict):
    """Someone else saved the plan between our read and our write; the use case retries."""

    code = "stale-version"


class PlanSummary(NamedTuple):
    """A plan as a list shows it: the plan, its sync status and when it last went either way."""

    plan: Plan
    sync_status: str
    last_synced: datetime | None


CommittedPlan = tuple[dict[str, Any], int]  # a plan's document and version, as read_committed read them


def read_committed(engine: Engine, plan_id: str) -> CommittedPlan | None:
    """Return the plan's document and version as last committed (None: no such plan), read outside any
    transaction: on SQLite without the writer lock. Work done on it is checked with PlanRepository.still
    inside the transaction before it is kept."""
    row = _PLAN_READ.first_outside(engine, {"id": plan_id})
    return None if row is None else (row[0], row[1])


class PlanRepository:
    """Plans stored as versioned JSON documents."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._loaded: dict[str, int] = {}
        # What the last `still` of a plan not yet there found of another plan equal to it but for case.
        self.twin_seen: str | None = None

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

    def _hold_folded(self, plan_id: str) -> None:
        """On PostgreSQL, hold until this transaction ends a lock on the plan id folded to lower case.

        Two transactions opening `plan-x` and `PLAN-X` at once each probed, found no twin (the other's plan was
        not committed yet) and saved: both plans were kept, and their pushes wrote the same FHIR resources.
        With the lock the second waits for the first to end, and its probe then sees the committed plan (under
        READ COMMITTED each statement reads what is committed when it starts). SQLite lets one writer in at a
        time already. The lock is taken only for a plan not yet there.
        """
        bind = self._session.get_bind()
        if bind.dialect.name == "postgresql":
            self._session.execute(_FOLD_LOCK, {"key": "plan-id:" + plan_id.lower()})

    def twin_in_all_but_case(self, plan_id: str) -> str | None:
        """Return the id of another plan equal to `plan_id` but for case (one probe of ix_plans_id_folded),
        None when there is none. On PostgreSQL the folded id stays locked to the end of the transaction
        (`_hold_folded`), so a twin opened at the same time is found by whichever comes second."""
        self._hold_folded(plan_id)
        row = _PLAN_TWIN.first(self._session, {"folded": plan_id.lower(), "id": plan_id})
        return None if row is None else row[0]

    def still(self, plan_id: str, committed: CommittedPlan | None) -> bool:
        """Return whether the plan is, in this transaction, exactly what read_committed read (the same
        version and document; None: still no such plan); if so, remember the version, as get does, for
        the optimistic check on save.

        When no plan was read (`committed` None), one probe of ix_plans_id_folded answers both whether there
        is still no such plan and whether another plan's id equals it but for case: that id (or None) is
        left in `twin_seen`, for the caller to refuse the new plan without asking again.
        """
        if committed is None:
            self._hold_folded(plan_id)
            ids = [row[0] for row in _PLAN_FOLDED.all(self._session, {"folded": plan_id.lower()})]
            self.twin_seen = next((other for other in ids if other != plan_id), None)
            return plan_id not in ids
        row = _PLAN_READ.first(self._session, {"id": plan_id})
        if row is None:
            return row is None and committed is None
        document, version = row
        if version != committed[1] or document != committed[0]:
            return False
        self._loaded[plan_id] = version
        return True

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

    def save(self, plan: Plan) -> dict[str, Any]:
        """Insert a new plan or update one read earlier, refusing if it changed in between; return the
        document stored (for the caller to read, not to change)."""
        document = codec.to_dict(plan)
        assert plan.updated_at is not None, "touch() the plan first"
        updated_at = _instant(plan.updated_at) or datetime.now(UTC)
        created_at = _instant(plan.created_at) or updated_at
        if plan.id not in self._loaded:  # a duplicate id raises IntegrityError here, as a flush would
            _PLAN_INSERT.execute(
                self._session,
                {
                    "id": plan.id,
                    "patient_mrn": plan.patient.mrn or "",  # unknown for a plan whose Patient was referenced only
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
        return document


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
