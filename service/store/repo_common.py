"""Helpers the repositories share: the tables their statements use, statement builders and row helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.store.prepared import Prepared
from service.store.tables import DeliveryRow, InboundEventRow, OutboxRow, PlanRow, PlanSequenceRow, SubscriptionRow

_PLANS = PlanRow.__table__
_EVENTS = InboundEventRow.__table__
_OUTBOX = OutboxRow.__table__
_SEQUENCES = PlanSequenceRow.__table__
_SUBSCRIPTIONS = SubscriptionRow.__table__
_DELIVERIES = DeliveryRow.__table__


def _insert(table: sa.Table, *names: str) -> Prepared:
    """INSERT of the named columns, each a bind of the same name."""
    return Prepared(sa.insert(table).values({name: sa.bindparam(name, type_=table.c[name].type) for name in names}))


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


def row_dict(row: Any, *names: str) -> dict[str, Any]:
    """Return the named attributes of a row as a dict (for API answers and CLI output)."""
    return {name: getattr(row, name) for name in names}
