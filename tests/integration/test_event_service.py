import hashlib
import json

import pytest
import sqlalchemy as sa

from service.api.schemas import EVENT_DATA_SCHEMAS, GoalProposedDataSchema
from service.services.events import Envelope, ReusedWebhookId, handle_event
from service.store.tables import InboundEventRow, OutboxRow
from service.store.uow import UnitOfWork
from tests.support import Clock, goal_event


def envelope(event: dict, webhook_id: str = "msg_1") -> Envelope:
    raw = json.dumps(event).encode()
    return Envelope(webhook_id, hashlib.sha256(raw).hexdigest(), event)


def apply(engine, event: dict, webhook_id: str = "msg_1"):
    command = GoalProposedDataSchema().load(event["data"])
    return handle_event(engine, envelope(event, webhook_id), event["type"], command, Clock())


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_an_event_changes_the_plan_records_itself_and_queues_a_push_in_one_go(engine):
    event = goal_event(plan_id="plan-a")
    outcome = apply(engine, event)
    assert outcome.status == 202 and not outcome.replayed
    assert outcome.body == {
        "status": "accepted",
        "event_id": "msg_1",
        "sender": "default",
        "type": "goal.proposed",
        "plan_id": "plan-a",
        "plan_version": 1,
    }
    with UnitOfWork(engine) as uow:
        plan = uow.plans.get("plan-a")
        assert plan.goals[0].description.text == event["data"]["goal"]["description"]
        assert plan.goals[0].proposed_by == "patient"
        assert [(m.id, m.kind) for m in plan.team] == [("patient", "patient")]
        assert [(r.kind, r.status) for r in uow.outbox.list()] == [("push_plan", "pending")]
    assert count(engine, InboundEventRow.__table__) == 1


def test_the_same_event_again_is_answered_the_same_and_applied_once(engine):
    event = goal_event(plan_id="plan-b")
    first = apply(engine, event)
    again = apply(engine, event)
    assert again.replayed and (again.status, again.body) == (first.status, first.body)
    assert count(engine, OutboxRow.__table__) == 1


def test_a_reused_webhook_id_with_another_body_is_refused(engine):
    apply(engine, goal_event(plan_id="plan-c"))
    with pytest.raises(ReusedWebhookId):
        apply(engine, goal_event(plan_id="plan-c", goal_id="other"))
    with UnitOfWork(engine) as uow:
        assert [g.id for g in uow.plans.get("plan-c").goals] == ["goal-walk"]


def test_a_refused_event_changes_nothing_and_its_refusal_is_replayed(engine):
    event = goal_event(plan_id="plan-d")
    apply(engine, event, "msg_1")
    duplicate_goal = apply(engine, event, "msg_2")  # same goal id under a new webhook id
    assert duplicate_goal.status == 409
    assert duplicate_goal.body["type"] == "urn:planbridge:problem:conflict"
    with UnitOfWork(engine) as uow:
        assert uow.plans.get("plan-d").version == 1
    assert count(engine, OutboxRow.__table__) == 1
    replay = apply(engine, event, "msg_2")
    assert replay.replayed and replay.status == 409


def test_a_plan_cannot_change_patient(engine):
    apply(engine, goal_event(plan_id="plan-e", mrn="MRN-1"), "m1")
    outcome = apply(engine, goal_event(plan_id="plan-e", goal_id="g2", mrn="MRN-2"), "m2")
    assert outcome.status == 409
    with UnitOfWork(engine) as uow:
        assert len(uow.plans.get("plan-e").goals) == 1


def test_any_catalogue_command_goes_through_the_same_path_and_an_unknown_plan_is_a_recorded_404(engine):
    note = {"type": "note.added", "timestamp": "2026-11-22T10:00:00Z"}
    note["data"] = {"plan_id": "plan-f", "text": "Hello", "author": "patient"}
    command = EVENT_DATA_SCHEMAS["note.added"]().load(note["data"])
    missing = handle_event(engine, envelope(note, "n1"), "note.added", command, Clock())
    assert (missing.status, missing.body["type"]) == (404, "urn:planbridge:problem:not-found")
    apply(engine, goal_event(plan_id="plan-f"), "g1")
    again = handle_event(engine, envelope(note, "n1"), "note.added", command, Clock())
    assert again.replayed and again.status == 404  # the first answer stands for that webhook id
    added = handle_event(engine, envelope(note, "n2"), "note.added", command, Clock())
    assert (added.status, added.body["plan_version"]) == (202, 2)
    with UnitOfWork(engine) as uow:
        assert [n.text for n in uow.plans.get("plan-f").notes] == ["Hello"]
        assert [r.kind for r in uow.outbox.list("plan-f")] == ["push_plan", "push_plan"]
