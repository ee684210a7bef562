from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from service.domain import codec
from service.domain.errors import Conflict, RuleViolation
from service.domain.model import Coding, Goal, Identifier, Patient, Plan, Proposer, Target

AT = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def make_plan() -> Plan:
    return Plan(id="plan-1", patient=Patient(mrn="MRN-1", display_name="Sam"))


def test_proposing_a_goal_adds_it_and_bumps_the_version():
    plan = make_plan()
    plan.propose_goal(Goal(id="g1", description="Sleep through the night"), AT)
    assert [g.id for g in plan.goals] == ["g1"]
    assert plan.version == 1
    assert plan.created_at == plan.updated_at == AT


def test_a_goal_id_is_used_once_per_plan():
    plan = make_plan()
    plan.propose_goal(Goal(id="g1", description="a"), AT)
    with pytest.raises(Conflict):
        plan.propose_goal(Goal(id="g1", description="b"), AT)
    assert plan.version == 1 and len(plan.goals) == 1


@pytest.mark.parametrize("status", ["completed", "revoked"])
def test_a_closed_plan_takes_no_new_goals(status):
    plan = make_plan()
    plan.status = status
    with pytest.raises(RuleViolation):
        plan.propose_goal(Goal(id="g1", description="a"), AT)
    assert plan.goals == [] and plan.version == 0


def test_a_goal_enters_as_proposed():
    with pytest.raises(RuleViolation):
        make_plan().propose_goal(Goal(id="g1", description="a", lifecycle_status="active"), AT)


def test_plan_json_round_trips_every_field():
    plan = make_plan()
    plan.propose_goal(
        Goal(
            id="g1",
            description="Walk to the park",
            priority="high-priority",
            proposed_by=Proposer(kind="practitioner", identifier=Identifier("urn:npi", "123"), display="Dr A"),
            start_date=date(2026, 11, 22),
            targets=[
                Target(
                    measure=Coding("http://loinc.org", "41950-7", "Steps"),
                    value=Decimal("4000.5"),
                    comparator=">=",
                    unit="/d",
                    due_date=date(2027, 1, 31),
                ),
                Target(measure=Coding(display="Feeling"), text="calmer"),
            ],
        ),
        AT,
    )
    data = codec.to_dict(plan)
    assert data["goals"][0]["targets"][0]["value"] == 4000.5
    assert data["updated_at"] == "2026-11-22T09:00:00+00:00"
    assert "comparator" not in data["goals"][0]["targets"][1]  # absent values are left out
    assert codec.from_dict(Plan, data) == plan
