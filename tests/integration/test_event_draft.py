"""An event is applied to its plan before the transaction (service/services/events.py `_draft`), so the
CPU-heavy part runs without the writer; the transaction keeps that draft only while the plan is exactly
what it was applied to. Here another event commits between the draft and the transaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime

from service.api.schemas import GoalProposedDataSchema
from service.services.events import Envelope, Outcome, handle_event
from service.store.uow import UnitOfWork
from tests.support import Clock, goal_event


def send(engine, event: dict, webhook_id: str, clock: Callable[[], datetime] | None = None) -> Outcome:
    raw = json.dumps(event).encode()
    envelope = Envelope(webhook_id, hashlib.sha256(raw).hexdigest(), event)
    command = GoalProposedDataSchema().load(event["data"])
    return handle_event(engine, envelope, event["type"], command, clock or Clock())


class Interloper:
    """A clock that, the first time it is read (while the event is drafted), lets another event commit."""

    def __init__(self, engine, event: dict) -> None:
        self.engine, self.event, self.reads, self.clock = engine, event, 0, Clock()

    def __call__(self) -> datetime:
        self.reads += 1
        if self.reads == 1:
            assert send(self.engine, self.event, "msg_interloper").status == 202
        return self.clock()


def goals(engine, plan_id: str) -> tuple[int, list[str]]:
    with UnitOfWork(engine) as uow:
        plan = uow.plans.get(plan_id)
        return plan.version, [g.id for g in plan.goals]


def test_a_plan_changed_after_the_draft_gets_the_event_applied_to_its_new_state(engine):
    send(engine, goal_event("plan-moved", "goal-walk", mrn="MRN-1"), "msg_1")
    clock = Interloper(engine, goal_event("plan-moved", "goal-swim", mrn="MRN-1"))
    outcome = send(engine, goal_event("plan-moved", "goal-bike", mrn="MRN-1"), "msg_2", clock)
    assert (outcome.status, outcome.body["plan_version"]) == (202, 3)
    assert goals(engine, "plan-moved") == (3, ["goal-walk", "goal-swim", "goal-bike"])  # nothing lost
    assert clock.reads == 2  # the draft was set aside and the event applied again inside


def test_a_plan_created_after_the_draft_refuses_what_the_draft_accepted(engine):
    clock = Interloper(engine, goal_event("plan-new", "goal-walk", mrn="MRN-2"))
    outcome = send(engine, goal_event("plan-new", "goal-walk", mrn="MRN-2"), "msg_1", clock)
    assert outcome.status == 409  # the same goal again, on the plan that now exists
    assert goals(engine, "plan-new") == (1, ["goal-walk"])


def test_an_unchanged_plan_keeps_the_draft(engine):
    send(engine, goal_event("plan-still", "goal-walk", mrn="MRN-3"), "msg_1")
    reads = []

    def clock() -> datetime:
        reads.append(1)
        return Clock()()

    outcome = send(engine, goal_event("plan-still", "goal-bike", mrn="MRN-3"), "msg_2", clock)
    assert (outcome.status, outcome.body["plan_version"]) == (202, 2)
    assert goals(engine, "plan-still") == (2, ["goal-walk", "goal-bike"])
    assert len(reads) == 1  # applied once, before the transaction
    refused = send(engine, goal_event("plan-still", "goal-bike", mrn="MRN-3"), "msg_3", clock)
    assert refused.status == 409 and len(reads) == 2 and goals(engine, "plan-still")[0] == 2
