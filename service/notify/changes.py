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

A subscriber that filters event types sees gaps in `sequence`; gaps never mean reordering, because
one plan's deliveries to one subscriber go strictly in sequence order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from service.store.uow import UnitOfWork

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


def timestamp(now: datetime) -> str:
    """Return an instant as RFC 3339 UTC with a Z."""
    return now.astimezone(UTC).isoformat().replace("+00:00", "Z")


def record_change(uow: UnitOfWork, plan_id: str, event_type: str, payload: dict[str, Any], now: datetime) -> int:
    """Number the plan's change and queue it for every subscription that wants it; return the sequence.

    `payload` is `{"plan_version": int, "source": "team"|"ehr", "change": {...}}`; call inside an open
    unit of work, before its commit, so the change and its notifications commit together.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    if payload.get("source") not in SOURCES or not isinstance(payload.get("plan_version"), int):
        raise ValueError("payload needs source (team or ehr) and an integer plan_version")
    sequence = uow.deliveries.next_sequence(plan_id)
    body = {
        "type": event_type,
        "timestamp": timestamp(now),
        "data": {
            "plan_id": plan_id,
            "plan_version": payload["plan_version"],
            "sequence": sequence,
            "source": payload["source"],
            "change": payload.get("change") or {},
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
            for subscription_id in uow.subscriptions.wanting(event_type)
        ]
    )
    return sequence
