"""Links to FHIR resources, each plan's sync state, conflicts and cursors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.domain.errors import NotFound
from service.store.tables import ConflictRow, FhirLinkRow, SyncCursorRow, SyncStateRow


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
