"""Links to FHIR resources, each plan's sync state, conflicts and cursors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.domain.errors import NotFound
from service.store.prepared import Prepared
from service.store.tables import ConflictRow, FhirLinkRow, PlanRow, SyncCursorRow, SyncStateRow

_LINKS = FhirLinkRow.__table__
_LINK_COLUMNS = ("plan_id", "local_key", "resource_type", "fhir_id", "version_id", "synced_at")


def _upsert_links(insert: Any) -> Prepared:
    """INSERT of a link that updates the one of the same plan and key when there is one (one statement)."""
    statement = insert(_LINKS).values({name: sa.bindparam(name, type_=_LINKS.c[name].type) for name in _LINK_COLUMNS})
    updated = {name: statement.excluded[name] for name in _LINK_COLUMNS[2:]}
    return Prepared(statement.on_conflict_do_update(index_elements=["plan_id", "local_key"], set_=updated))


_LINK_UPSERTS = {"postgresql": _upsert_links(postgresql.insert), "sqlite": _upsert_links(sqlite.insert)}
_STATE = SyncStateRow.__table__
_THIS_STATE = _STATE.c.plan_id == sa.bindparam("plan_id", type_=_STATE.c.plan_id.type)


def _bind(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=_STATE.c[name].type)


# A push reads and writes a plan's sync state with these statements (compiled once, run on the driver's
# cursor): the small columns it decides by, never the merge base it does not need.
_PUSH_VIEW = Prepared(
    sa.select(_STATE.c.status, _STATE.c.pushed_hash, _STATE.c.push_started_at, _STATE.c.provenance_through).where(
        _THIS_STATE
    )
)
_BASE_DOCUMENT = Prepared(sa.select(_STATE.c.base_document).where(_THIS_STATE))
_MARK_IN_FLIGHT = Prepared(
    sa.update(_STATE)
    .where(_THIS_STATE)
    .values(push_started_at=_bind("push_started_at"), push_sent_document=_bind("push_sent_document"))
)
_PUSHED = Prepared(
    sa.update(_STATE)
    .where(_THIS_STATE)
    .values(
        status=_bind("status"),
        base_document=_bind("base_document"),
        pushed_hash=_bind("pushed_hash"),
        last_pushed_at=_bind("last_pushed_at"),
        last_error=sa.null(),
        last_outcome=_bind("last_outcome"),
        push_started_at=sa.null(),
        push_sent_document=_bind("push_sent_document"),
        # the highest history sequence a push carried never goes back
        provenance_through=sa.case(
            (
                sa.func.coalesce(_STATE.c.provenance_through, sa.literal_column("0")) > _bind("provenance_through"),
                _STATE.c.provenance_through,
            ),
            else_=_bind("provenance_through"),
        ),
    )
)
# A push's first write of a plan with no sync state yet: the columns its update would have set (the others NULL).
_INSERT_IN_FLIGHT = Prepared(
    sa.insert(_STATE).values(
        plan_id=_bind("plan_id"),
        status=sa.literal_column("'pending'"),
        push_started_at=_bind("push_started_at"),
        push_sent_document=_bind("push_sent_document"),
    )
)


def _upsert_in_flight(insert: Any) -> Prepared:
    """`_MARK_IN_FLIGHT`, or `_INSERT_IN_FLIGHT` when the plan has no sync state yet, as one statement (a plan's
    first push: one statement, its document converted to JSON once, not an UPDATE finding nothing and then an
    INSERT)."""
    statement = insert(_STATE).values(
        plan_id=_bind("plan_id"),
        status=sa.literal_column("'pending'"),
        push_started_at=_bind("push_started_at"),
        push_sent_document=_bind("push_sent_document"),
    )
    updated = {name: statement.excluded[name] for name in ("push_started_at", "push_sent_document")}
    return Prepared(statement.on_conflict_do_update(index_elements=["plan_id"], set_=updated))


_IN_FLIGHT_UPSERTS = {"postgresql": _upsert_in_flight(postgresql.insert), "sqlite": _upsert_in_flight(sqlite.insert)}
_INSERT_PUSHED = Prepared(
    sa.insert(_STATE).values(
        plan_id=_bind("plan_id"),
        status=_bind("status"),
        base_document=_bind("base_document"),
        pushed_hash=_bind("pushed_hash"),
        last_pushed_at=_bind("last_pushed_at"),
        provenance_through=_bind("provenance_through"),
    )
)
_PLAN = PlanRow.__table__
_CONFLICTS = ConflictRow.__table__
# What a push reads of a plan's links and open conflicts, as plain rows (no ORM objects to build).
_PLAN_LINKS = Prepared(
    sa.select(_LINKS.c.local_key, _LINKS.c.resource_type, _LINKS.c.fhir_id, _LINKS.c.version_id).where(
        _LINKS.c.plan_id == sa.bindparam("plan_id", type_=_LINKS.c.plan_id.type)
    )
)
_HELD = Prepared(
    sa.select(_CONFLICTS.c.path, _CONFLICTS.c.theirs)
    .where(_CONFLICTS.c.plan_id == sa.bindparam("plan_id", type_=_CONFLICTS.c.plan_id.type))
    .where(_CONFLICTS.c.status == sa.literal_column("'open'"))
    .order_by(_CONFLICTS.c.id)
)
# After a push: how many conflicts the plan has open, and its stored version (NULL: no such plan), in one read.
_AFTER_PUSH = Prepared(
    sa.select(
        sa.select(sa.func.count())
        .where(_CONFLICTS.c.plan_id == sa.bindparam("plan_id", type_=_CONFLICTS.c.plan_id.type))
        .where(_CONFLICTS.c.status == sa.literal_column("'open'"))
        .scalar_subquery(),
        sa.select(_PLAN.c.version)
        .where(_PLAN.c.id == sa.bindparam("plan_id", type_=_PLAN.c.id.type))
        .scalar_subquery(),
    )
)


@dataclass(frozen=True)
class PushView:
    """The columns of a plan's sync state a push decides by (`status` is `pending` before the first sync)."""

    status: str = "pending"
    pushed_hash: str | None = None
    push_started_at: datetime | None = None
    provenance_through: int | None = None


@dataclass(frozen=True)
class EhrOrigin:
    """Where the EHR's side of a conflict came from: the resource and version that carried it, when that
    version was written (its meta.lastUpdated) and who wrote it as FHIR says it (meta.source, a URI).
    Any of them None when not known."""

    resource_type: str | None = None
    resource_id: str | None = None
    version: str | None = None
    changed_at: datetime | None = None
    changed_by: str | None = None


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

    def write(self, plan_id: str, links: list[tuple[str, str, str, str | None]], now: datetime) -> None:
        """Insert or update many links of a plan at once: (local key, type, id, version) each, one statement
        sent as a batch; no read first. Rows of this plan read before in this transaction are not updated:
        use it in a transaction that reads no link rows."""
        if not links:
            return
        upsert = _LINK_UPSERTS.get(self._session.get_bind().dialect.name)
        if upsert is None:  # another database: row by row through the ORM
            for key, rtype, fhir_id, version in links:
                self.record(plan_id, key, rtype, fhir_id, version, now)
            return
        rows = [
            {"plan_id": plan_id, "local_key": key, "resource_type": rtype, "fhir_id": fhir_id, "version_id": version}
            for key, rtype, fhir_id, version in links
        ]
        upsert.executemany(self._session, [{**row, "synced_at": now} for row in rows])
        self._by_plan.pop(plan_id, None)

    def for_plan(self, plan_id: str) -> list[FhirLinkRow]:
        """Return every link of a plan."""
        return list(self._session.scalars(sa.select(FhirLinkRow).where(FhirLinkRow.plan_id == plan_id)))

    def linked(self, plan_id: str) -> dict[str, tuple[str, str, str | None]]:
        """Return every link of a plan as {local key: (type, id, version)}, read as plain rows."""
        return {
            key: (rtype, fhir_id, version)
            for key, rtype, fhir_id, version in _PLAN_LINKS.all(self._session, {"plan_id": plan_id})
        }

    def naming(self, resource_type: str, fhir_ids: list[str]) -> list[FhirLinkRow]:
        """Return the links to these resources of one type, whatever their plan (200 ids a query; none asked
        for none): how a resource the server says was deleted is traced to the plans that hold it."""
        found: list[FhirLinkRow] = []
        wanted = sorted(set(fhir_ids))
        for start in range(0, len(wanted), 200):
            query = sa.select(FhirLinkRow).where(
                FhirLinkRow.resource_type == resource_type, FhirLinkRow.fhir_id.in_(wanted[start : start + 200])
            )
            found.extend(self._session.scalars(query))
        return found

    def linked_types(self, resource_types: Iterable[str]) -> set[str]:
        """Return which of these resource types some link names, whatever its plan (one query, each type one probe
        of the (resource_type, fhir_id) index)."""
        probes = [
            sa.select(sa.literal(rtype)).where(sa.exists().where(FhirLinkRow.resource_type == rtype))
            for rtype in sorted(set(resource_types))
        ]
        if not probes:
            return set()
        return set(self._session.scalars(sa.union_all(*probes) if len(probes) > 1 else probes[0]))

    def mark_deleted(self, plan_id: str, deletes: dict[str, tuple[str, str | None, str]]) -> None:
        """Note on the plan's links (local key: (resource id, link version, version of the delete)) that a pull
        was made for the server's delete of what they name, so it is not traced again; a link since moved to
        another resource or version is left as it is."""
        for key, (fhir_id, version, deleted) in deletes.items():
            link = self.get(plan_id, key)
            if link is not None and (link.fhir_id, link.version_id) == (fhir_id, version):
                link.deleted_version = deleted

    def oldest_sync(self, resource_type: str) -> datetime | None:
        """Return when the least recently synced link to a resource of this type was last written or read
        (planbridge's clock), None when there is no such link."""
        query = sa.select(sa.func.min(FhirLinkRow.synced_at)).where(FhirLinkRow.resource_type == resource_type)
        return self._session.scalar(query)

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

    def push_view(self, plan_id: str) -> PushView:
        """Return the small columns of the plan's sync state a push decides by (no documents decoded)."""
        row = _PUSH_VIEW.first(self._session, {"plan_id": plan_id})
        return PushView(*row) if row is not None else PushView()

    def base_document(self, plan_id: str) -> dict[str, Any] | None:
        """Return the plan's merge base (what the server held after the last sync), or None."""
        row = _BASE_DOCUMENT.first(self._session, {"plan_id": plan_id})
        return row[0] if row is not None else None

    def mark_in_flight(self, plan_id: str, started: datetime | None, sent: dict[str, Any] | None) -> None:
        """Set (or clear, with None) the mark of a push under way and the document it sends."""
        params = {"plan_id": plan_id, "push_started_at": started, "push_sent_document": sent}
        upsert = _IN_FLIGHT_UPSERTS.get(self._session.get_bind().dialect.name)
        if upsert is not None:
            upsert.execute(self._session, params)
        elif not _MARK_IN_FLIGHT.execute(self._session, params):
            _INSERT_IN_FLIGHT.execute(self._session, params)

    def record_push(
        self, plan_id: str, status: str, base_document: dict[str, Any], pushed_hash: str, now: datetime, through: int
    ) -> None:
        """Record a push whose every transaction landed: the new merge base and digest, the status, no error,
        no mark in flight, and `provenance_through` raised to `through` (never lowered)."""
        params = {
            "plan_id": plan_id,
            "status": status,
            "base_document": base_document,
            "pushed_hash": pushed_hash,
            "last_pushed_at": now,
            "last_outcome": None,
            "push_sent_document": None,
            "provenance_through": through,
        }
        if not _PUSHED.execute(self._session, params):
            _INSERT_PUSHED.execute(self._session, params)

    def after_push(self, plan_id: str) -> tuple[int, int | None]:
        """Return how many open conflicts the plan has and its stored version (None: no such plan), in one
        read that decodes no document."""
        row = _AFTER_PUSH.first(self._session, {"plan_id": plan_id})
        assert row is not None
        return int(row[0] or 0), (int(row[1]) if row[1] is not None else None)

    def states(self, status: str | None = None) -> list[SyncStateRow]:
        """Return every plan's sync state, optionally only those with `status`."""
        query = sa.select(SyncStateRow).order_by(SyncStateRow.plan_id)
        if status is not None:
            query = query.where(SyncStateRow.status == status)
        return list(self._session.scalars(query))

    def add_conflict(
        self,
        plan_id: str,
        path: str,
        base: Any,
        ours: Any,
        theirs: Any,
        now: datetime,
        origin: EhrOrigin | None = None,
    ) -> ConflictRow:
        """Record an open conflict, with where the EHR's side came from when the pull knows it."""
        row = ConflictRow(
            plan_id=plan_id, path=path, base=base, ours=ours, theirs=theirs, status="open", created_at=now
        )
        self.set_origin(row, origin)
        self._session.add(row)
        self._session.flush()
        return row

    @staticmethod
    def set_origin(row: ConflictRow, origin: EhrOrigin | None) -> None:
        """Record (or clear, with None) the resource, version, time and author of a conflict's EHR side."""
        origin = origin or EhrOrigin()
        row.ehr_resource_type, row.ehr_resource_id = origin.resource_type, origin.resource_id
        row.ehr_version, row.ehr_changed_at, row.ehr_changed_by = origin.version, origin.changed_at, origin.changed_by

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

    def held(self, plan_id: str) -> dict[str, Any]:
        """Return the plan's open conflicts as {path: theirs} (a later conflict of a path wins), as plain rows."""
        return dict(_HELD.all(self._session, {"plan_id": plan_id}))

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
