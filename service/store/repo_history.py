"""A plan's history: every accepted change, in order (plan_history). Written by
`service.notify.changes.record_change` with one INSERT in the change's own transaction."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.store.prepared import Prepared
from service.store.repo_common import _insert
from service.store.tables import PlanHistoryRow

_HISTORY = PlanHistoryRow.__table__
HISTORY_COLUMNS = tuple(column.key for column in _HISTORY.columns)
_HISTORY_INSERT = _insert(_HISTORY, *HISTORY_COLUMNS)
_LAST_SEQUENCE = Prepared(
    sa.select(sa.func.max(_HISTORY.c.sequence)).where(_HISTORY.c.plan_id == sa.bindparam("plan_id"))
)


def history_row(**given: Any) -> dict[str, Any]:
    """Return a plan_history row with every column: those `given`, the rest None (the INSERT binds them all)."""
    unknown = set(given) - set(HISTORY_COLUMNS)
    if unknown:
        raise ValueError(f"not plan_history columns: {sorted(unknown)}")
    return {column: given.get(column) for column in HISTORY_COLUMNS}


class HistoryRepository:
    """Each plan's accepted changes, by sequence."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, row: dict[str, Any]) -> None:
        """Record one change (a dict of every PlanHistoryRow column) with one INSERT."""
        _HISTORY_INSERT.execute(self._session, row)

    def page(self, plan_id: str, after: int = 0, limit: int = 100) -> list[PlanHistoryRow]:
        """Return up to `limit` changes of the plan with sequences above `after`, oldest first."""
        query = (
            sa.select(PlanHistoryRow)
            .where(PlanHistoryRow.plan_id == plan_id, PlanHistoryRow.sequence > after)
            .order_by(PlanHistoryRow.sequence)
            .limit(limit)
        )
        return list(self._session.scalars(query))

    def last_sequence(self, plan_id: str) -> int:
        """Return the sequence of the plan's latest recorded change (0 when none)."""
        row = _LAST_SEQUENCE.first(self._session, {"plan_id": plan_id})
        return int(row[0]) if row and row[0] is not None else 0

    def team_between(self, plan_id: str, after: int, through: int) -> list[PlanHistoryRow]:
        """Return the plan's team changes with sequences in (after, through], oldest first."""
        query = (
            sa.select(PlanHistoryRow)
            .where(
                PlanHistoryRow.plan_id == plan_id,
                PlanHistoryRow.source == "team",
                PlanHistoryRow.sequence > after,
                PlanHistoryRow.sequence <= through,
            )
            .order_by(PlanHistoryRow.sequence)
        )
        return list(self._session.scalars(query))
