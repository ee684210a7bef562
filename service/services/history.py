"""A plan's history: every accepted change, in order, from the team or from the EHR, with the plan paths it
changed (`GET /plans/{id}/history`, and the console's timeline).

Each entry (`plan_history` returns a list of these, oldest first)::

    {"sequence": 7,                          # per plan, the change log's number (the cursor: ?after=7)
     "at": "2026-11-22T09:30:00.123456Z",    # when planbridge accepted the change (UTC)
     "plan_version": 3,                      # the plan's version after it
     "source": "team" | "ehr",
     "event_type": "goal.proposed",          # a team event type, or "ehr.plan_changed"
     "paths": ["goals[id=goal-walk]"],       # plan paths it changed (["*"]: the whole plan), at most 50
     "paths_total": 1,                       # how many changed, those left out of `paths` included
     "team": {"sender": "dietetics", "event_id": "msg_...", "members": ["patient", "dietitian"]} | null,
     "ehr": {"resource_type": "CarePlan", "resource_id": "12", "resource_version": "3",
             "outcome": "updated" | "merged" | "conflicted" | "new" | ...} | null}

`team` is set for a team change (the members are the member ids the event named), `ehr` for a change
pulled from the EHR. No value from the plan is in an entry: ids, types and paths only.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import sqlalchemy as sa

from service.domain.errors import NotFound
from service.store.tables import PlanHistoryRow, PlanRow
from service.store.uow import UnitOfWork

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def history_entry(row: PlanHistoryRow) -> dict[str, Any]:
    """Return one plan_history row as a history entry (the shape above)."""
    team = ehr = None
    if row.source == "team":
        team = {"sender": row.sender, "event_id": row.event_id, "members": list(row.members or [])}
    else:
        ehr = {
            "resource_type": row.resource_type,
            "resource_id": row.resource_id,
            "resource_version": row.resource_version,
            "outcome": row.outcome,
        }
    return {
        "sequence": row.sequence,
        "at": row.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "plan_version": row.plan_version,
        "source": row.source,
        "event_type": row.event_type,
        "paths": list(row.paths or []),
        "paths_total": row.paths_total,
        "team": team,
        "ehr": ehr,
    }


def plan_history(uow: UnitOfWork, plan_id: str, limit: int = DEFAULT_LIMIT, after: int = 0) -> list[dict[str, Any]]:
    """Return up to `limit` (1-1001: a page of at most 1000, and one more to tell whether another page
    follows) of the plan's changes with sequences above `after`, oldest first.

    Raises NotFound when there is no such plan, ValueError for a limit or position out of range. `uow` may
    be open already (then it is used as it is) or not (then it is opened and closed here).
    """
    if not 1 <= limit <= MAX_LIMIT + 1 or after < 0:
        raise ValueError(f"limit must be 1-{MAX_LIMIT + 1} and after >= 0")
    if uow.session is None:
        with uow:
            return plan_history(uow, plan_id, limit, after)
    if uow.session.scalar(sa.select(PlanRow.id).where(PlanRow.id == plan_id)) is None:
        raise NotFound(f"plan {plan_id} does not exist", plan_id=plan_id)
    return [history_entry(row) for row in uow.history.page(plan_id, after=after, limit=limit)]
