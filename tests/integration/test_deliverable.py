"""The backstop behind the schemas: the service refuses (400) a change whose plan the push could never send."""

import copy
import dataclasses
import json

import pytest

from service.api.schemas import GoalProposedDataSchema
from service.domain import codec
from service.domain.changes import RecordCheckIn, apply_command
from service.domain.model import Plan
from service.domain.types import Coding, Concept
from service.services.deliverable import Undeliverable, check_deliverable
from service.services.events import handle_event
from service.store.uow import UnitOfWork
from tests.integration.test_event_service import envelope
from tests.support import FIXTURES, Clock, goal_event

BASE, MRN = "https://planbridge.example.org/id", "http://hospital.example.org/mrn"


def proposal(description: str = "Walk to the park", system: str = "http://loinc.org"):
    """A goal.proposed command made past the schemas (as a caller of the service could make it)."""
    event = goal_event(plan_id="plan-x")
    command = GoalProposedDataSchema().load(event["data"])
    goal = dataclasses.replace(command.goal, description=Concept(text=description))
    goal.targets[0].measure = Concept(codings=[Coding(system, "41950-7")])
    return event, dataclasses.replace(command, goal=goal)


@pytest.mark.parametrize(
    ("description", "system", "path"),
    [
        ("walk\x01", "http://loinc.org", "Goal(plan-x/goal-walk).description.text"),
        ("\ufeff", "http://loinc.org", "Goal(plan-x/goal-walk).description.text"),
        ("Walk", "not a uri", "Goal(plan-x/goal-walk).target[0].measure.coding[0].system"),
    ],
)
def test_a_change_fhir_would_refuse_is_refused_and_recorded(engine, description, system, path):
    event, command = proposal(description, system)
    outcome = handle_event(engine, envelope(event, "msg_bad"), event["type"], command, Clock())
    assert outcome.status == 400  # was 202, then every push of the plan failed for ever
    assert outcome.body["type"] == "urn:planbridge:problem:invalid-input"
    assert list(outcome.body["errors"]["fhir"]) == [path]
    assert path in outcome.body["detail"]
    with UnitOfWork(engine) as uow:
        assert uow.plans.get("plan-x") is None and uow.outbox.list() == []
    again = handle_event(engine, envelope(event, "msg_bad"), event["type"], command, Clock())
    assert again.replayed and again.body == outcome.body  # the refusal is the event's answer from now on


def _plan_with_check_ins(n: int):
    _, command = proposal()
    plan = apply_command(command, None, "2026-11-22T09:30:00+00:00")
    for i in range(n):
        check_in = RecordCheckIn("plan-x", "goal-walk", f"c{i}", "2026-11-22T09:30:00+00:00", integer=i)
        plan = apply_command(check_in, plan, "2026-11-22T09:30:00+00:00")
    return plan


def test_only_what_the_event_touched_is_mapped_and_checked():
    before = _plan_with_check_ins(3)
    before.goals[0].check_ins[0].note = "\x01"  # as if stored before the schemas refused it: not this event's doing
    added = apply_command(
        RecordCheckIn("plan-x", "goal-walk", "new", "2026-11-23T09:30:00+00:00", integer=1, note="fine"),
        before,
        "2026-11-23T09:30:00+00:00",
    )
    check_deliverable(before, added, BASE, MRN)  # the untouched check-in is not this event's fault
    poisoned = apply_command(
        RecordCheckIn("plan-x", "goal-walk", "bad", "2026-11-23T09:30:00+00:00", integer=1, note="\x02"),
        before,
        "2026-11-23T09:30:00+00:00",
    )
    with pytest.raises(Undeliverable) as refused:
        check_deliverable(before, poisoned, BASE, MRN)
    assert list(refused.value.errors["fhir"]) == ["Observation(plan-x/goal-walk/bad).note[0].text"]
    renamed = dataclasses.replace(added, title="\x03")  # anything else is checked whole, whoever changed it
    with pytest.raises(Undeliverable):
        check_deliverable(before, renamed, BASE, MRN)


def test_a_plan_already_undeliverable_does_not_refuse_events_that_add_nothing_wrong():
    """Found by the model-based sync test: a plan holding content that does not map (pulled from an EHR,
    or accepted before the check) made every later event a 400, although the event added no problem."""
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "minimal.json").read_text()))
    broken = copy.deepcopy(plan)
    broken.goals[0].description = dataclasses.replace(broken.goals[0].description, text="bad\x01text")  # pulled
    after = copy.deepcopy(broken)
    after.title = "A new title"
    check_deliverable(broken, after, "https://planbridge.test/id", "http://hospital.example.org/mrn")  # accepted
    worse = copy.deepcopy(broken)
    worse.title = "also\x02bad"
    with pytest.raises(Undeliverable):
        check_deliverable(broken, worse, "https://planbridge.test/id", "http://hospital.example.org/mrn")
    with pytest.raises(Undeliverable):
        check_deliverable(plan, broken, "https://planbridge.test/id", "http://hospital.example.org/mrn")


def _two_goal_plan() -> Plan:
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "minimal.json").read_text()))
    second = dataclasses.replace(copy.deepcopy(plan.goals[0]), id="goal-two", check_ins=[], ratings=[])
    return dataclasses.replace(plan, goals=[*plan.goals, second])


def _checked_goals(monkeypatch) -> list[set[str]]:
    """Record, per validation, the identifier values of the Goal resources in the Bundle validated."""
    from service.services import deliverable

    seen: list[set[str]] = []
    real = deliverable.validate_bundle

    def spy(bundle):
        seen.append(
            {
                i["value"]
                for e in bundle["entry"]
                if e["resource"]["resourceType"] == "Goal"
                for i in e["resource"].get("identifier", [])
                if i.get("system", "").endswith("/goal")
            }
        )
        return real(bundle)

    monkeypatch.setattr(deliverable, "validate_bundle", spy)
    return seen


def test_a_goal_the_event_left_as_it_was_is_not_validated_again(monkeypatch):
    before = _two_goal_plan()
    first, second = (f"{before.id}/{g.id}" for g in before.goals)
    seen = _checked_goals(monkeypatch)
    after = copy.deepcopy(before)
    after.goals[1].description = dataclasses.replace(after.goals[1].description, text="Swim on Sundays")
    after.version += 1
    check_deliverable(before, after, BASE, MRN)
    assert seen == [{second}]  # the first goal and everything it is mapped from are as they were
    poisoned = copy.deepcopy(after)
    poisoned.goals[1].description = dataclasses.replace(poisoned.goals[1].description, text="swim\x01")
    seen.clear()
    with pytest.raises(Undeliverable) as refused:
        check_deliverable(before, poisoned, BASE, MRN)
    assert list(refused.value.errors["fhir"]) == [f"Goal({second}).description.text"]
    assert seen[:2] == [{second}, {first, second}]  # a refusal is worked out on the whole plan


@pytest.mark.parametrize("change", ["team", "patient", "goal added", "replaces"])
def test_a_plan_level_change_validates_every_goal_it_affects(monkeypatch, change):
    """The patient, the team and the goals' ids and replacements go into every Goal resource: a change to
    any of them checks every goal again, and a goal that cannot be sent refuses the event."""
    before = _two_goal_plan()
    after = copy.deepcopy(before)
    if change == "team":
        after.team = [*after.team, dataclasses.replace(after.team[-1], id="new-member")]
    elif change == "patient":
        after.patient = dataclasses.replace(after.patient, display_name="Another Name")
    elif change == "goal added":
        after.goals.append(dataclasses.replace(copy.deepcopy(after.goals[1]), id="goal-three"))
    else:
        after.goals[1].replaces = after.goals[0].id
    seen = _checked_goals(monkeypatch)
    check_deliverable(before, after, BASE, MRN)
    assert seen[0] == {f"{before.id}/{g.id}" for g in after.goals}
    # The same change over a plan whose first goal holds what FHIR refuses (stored before the schemas
    # refused it): it is checked again and, as it is not new, the event is still accepted; a team or
    # patient change that itself breaks a goal resource would be refused (no goal is skipped).
    broken = copy.deepcopy(before)
    broken.goals[0].description = dataclasses.replace(broken.goals[0].description, text="bad\x01")
    later = copy.deepcopy(after)
    later.goals[0].description = broken.goals[0].description
    seen.clear()
    check_deliverable(broken, later, BASE, MRN)
    assert f"{before.id}/{before.goals[0].id}" in seen[0]
