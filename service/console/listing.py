"""The console's list of plans: plans with open conflicts first (what needs a person), then the rest, each
part in plan id order, a page at a time; filtered by sync state and searched by plan id or MRN.

A page starts after a cursor: the part (`conflicted` or `others`) and the plan id of the last row shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.domain import codec
from service.domain.model import Plan
from service.store.tables import ConflictRow, PlanRow, SyncStateRow

PARTS = ("conflicted", "others")
SEARCH_MAX = 128  # the longest plan id or MRN worth looking for


@dataclass(frozen=True)
class Listed:
    """A plan as the list shows it."""

    plan: Plan
    sync_status: str
    last_synced: datetime | None
    open_conflicts: int

    @property
    def part(self) -> str:
        """The part of the list the plan is in."""
        return PARTS[0] if self.open_conflicts else PARTS[1]


@dataclass(frozen=True)
class Page:
    """One page of plans, how many plans match in all and how many of them have open conflicts."""

    rows: list[Listed]
    total: int
    conflicted: int
    following: tuple[str, str] | None  # the cursor (part, plan id) of the next page, if there is one


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def plans_page(
    session: Session,
    *,
    limit: int,
    part: str = PARTS[0],
    after: str = "",
    sync_status: str | None = None,
    search: str = "",
) -> Page:
    """Return the page of plans after the cursor (`part`, `after`): conflicted plans first, then the rest.

    `search` matches a plan whose id contains it (any case) or whose patient's MRN is it (any case).
    """
    counts = (
        sa.select(ConflictRow.plan_id, sa.func.count().label("n"))
        .where(ConflictRow.status == "open")
        .group_by(ConflictRow.plan_id)
        .subquery()
    )
    open_conflicts = sa.func.coalesce(counts.c.n, 0)
    rank = sa.case((open_conflicts > 0, 0), else_=1)  # 0: conflicted, listed first
    status = sa.func.coalesce(SyncStateRow.status, "pending")
    matching = (
        sa.select(PlanRow.document, status, SyncStateRow.last_pushed_at, SyncStateRow.last_pulled_at, open_conflicts)
        .select_from(PlanRow)
        .outerjoin(SyncStateRow, SyncStateRow.plan_id == PlanRow.id)
        .outerjoin(counts, counts.c.plan_id == PlanRow.id)
    )
    if sync_status is not None:
        matching = matching.where(status == sync_status)
    search = search.strip()[:SEARCH_MAX]
    if search:
        matching = matching.where(
            sa.or_(
                PlanRow.id.ilike(_like(search), escape="\\"),
                sa.func.lower(PlanRow.patient_mrn) == search.lower(),
            )
        )
    numbers = matching.with_only_columns(sa.func.count(), sa.func.coalesce(sa.func.sum(1 - rank), 0))
    total, conflicted = session.execute(numbers.order_by(None)).one()
    start = PARTS.index(part) if part in PARTS else 0
    page = (
        matching.where(sa.or_(rank > start, sa.and_(rank == start, PlanRow.id > after)))
        .order_by(rank, PlanRow.id)
        .limit(limit + 1)
    )
    rows = [
        Listed(codec.from_dict(Plan, document), state, max((t for t in (pushed, pulled) if t), default=None), int(n))
        for document, state, pushed, pulled, n in session.execute(page)
    ]
    shown = rows[:limit]
    following = (shown[-1].part, shown[-1].plan.id) if len(rows) > limit else None
    return Page(shown, int(total or 0), int(conflicted or 0), following)
