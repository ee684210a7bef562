"""The change log subscribers receive: every plan change gets the plan's next sequence number and one
pending delivery per active subscription that wants its type, in the caller's transaction.

Payload (Standard Webhooks style, the body POSTed to the subscriber)::

    {"type": "goal.proposed",                 # the event type (a team event type or "ehr.plan_changed")
     "timestamp": "2026-11-22T09:30:00Z",     # when the change was recorded (UTC)
     "data": {"plan_id": "plan-ed-0001",
              "plan_version": 3,              # the plan's version after the change
              "sequence": 7,                  # per plan, +1 for every change of any type, never reused
              "source": "team" | "ehr",       # a team event, or a change pulled from the EHR's FHIR server
              "change": {...}}}               # what changed (see record_change's callers)

Every `change` carries `paths`: the fields of the plan that differ between before and after the change,
named as the three-way merge names them (`goals[id=goal-walk].lifecycle_status`), `["*"]` for a plan
that did not exist before, at most MAX_PATHS of them. A team event's change also carries the event's
`event_id`, `sender` and `data` as received; a change pulled from the EHR its `outcome`, `careplan_id`
and any `conflicts` it opened.

A subscriber that filters event types sees gaps in `sequence`; gaps never mean reordering, because
one plan's deliveries to one subscriber go strictly in sequence order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from service.domain import codec
from service.domain.model import Plan
from service.store.uow import UnitOfWork
from service.sync.merge import changed_paths, strip_bookkeeping

TEAM_EVENT_TYPES = (
    "plan.created",
    "plan.updated",
    "plan.reviewed",
    "goal_setting.declined",
    "goal_setting.resumed",
    "member.joined",
    "member.left",
    "goal.proposed",
    "goal.revised",
    "goal.status_changed",
    "agreement.recorded",
    "checkin.recorded",
    "step.added",
    "step.updated",
    "step.done",
    "note.added",
)
EHR_EVENT_TYPES = ("ehr.plan_changed",)
EVENT_TYPES = frozenset(TEAM_EVENT_TYPES + EHR_EVENT_TYPES)
SOURCES = ("team", "ehr")
MAX_PATHS = 50  # paths named in one change; the pull caps its own list the same way
EVERYTHING = ["*"]  # a plan that did not exist before the change (or whose earlier state is not known)
_UNKNOWN: Any = object()


def timestamp(now: datetime) -> str:
    """Return an instant as RFC 3339 UTC with a Z."""
    return now.astimezone(UTC).isoformat().replace("+00:00", "Z")


def plan_paths(before: Plan | dict[str, Any] | None, after: Plan | dict[str, Any] | None) -> list[str]:
    """Return the paths that differ between two states of a plan (`["*"]` when there was none before),
    as `service.sync.merge.changed_paths` names them, planbridge's version counters left out."""
    if before is None or after is None:
        return list(EVERYTHING)
    documents = [codec.to_dict(p) if isinstance(p, Plan) else p for p in (before, after)]
    return changed_paths(strip_bookkeeping(documents[0]), strip_bookkeeping(documents[1]))[:MAX_PATHS]


def _change_with_paths(uow: UnitOfWork, plan_id: str, change: dict[str, Any], before: Any) -> dict[str, Any]:
    """Return the change with the plan's changed paths, unless its caller named them."""
    if "paths" in change:
        return change
    if before is _UNKNOWN:
        return {**change, "paths": list(EVERYTHING)}
    return {**change, "paths": plan_paths(before, uow.deliveries.plan_document(plan_id))}


def record_change(
    uow: UnitOfWork,
    plan_id: str,
    event_type: str,
    payload: dict[str, Any],
    now: datetime,
    before: Plan | dict[str, Any] | None = _UNKNOWN,
) -> int:
    """Number the plan's change and queue it for every subscription that wants it; return the sequence.

    `payload` is `{"plan_version": int, "source": "team"|"ehr", "change": {...}}`; call inside an open
    unit of work, after the changed plan is saved and before the commit, so the change and its
    notifications commit together. The change's `paths` are what the caller gives, else those between
    `before` (the plan before the change; None when it did not exist) and the plan saved now. Without
    `before`, the plan noted in `uow.deliveries.plans_before` when the change read it is used; with
    neither, the paths are `["*"]`.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    if payload.get("source") not in SOURCES or not isinstance(payload.get("plan_version"), int):
        raise ValueError("payload needs source (team or ehr) and an integer plan_version")
    noted = uow.deliveries.plans_before.pop(plan_id, _UNKNOWN)
    before = noted if before is _UNKNOWN else before
    sequence = uow.deliveries.next_sequence(plan_id)
    wanting = uow.subscriptions.wanting(event_type)
    if not wanting:  # nobody to tell: the sequence is taken, and the paths are not worked out
        return sequence
    change = _change_with_paths(uow, plan_id, dict(payload.get("change") or {}), before)
    body = {
        "type": event_type,
        "timestamp": timestamp(now),
        "data": {
            "plan_id": plan_id,
            "plan_version": payload["plan_version"],
            "sequence": sequence,
            "source": payload["source"],
            "change": change,
        },
    }
    uow.deliveries.queue(
        [
            {
                "subscription_id": subscription_id,
                "plan_id": plan_id,
                "sequence": sequence,
                "event_type": event_type,
                "payload": body,
                "webhook_id": f"msg_{uuid.uuid4().hex}",
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "attempt_log": [],
                "created_at": now,
            }
            for subscription_id in wanting
        ]
    )
    return sequence
