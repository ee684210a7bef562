from decimal import Decimal

import pytest

from service.domain import codec
from service.domain.changes import find_or_join, propose_goal
from service.domain.errors import Conflict, RuleViolation
from service.domain.model import Agreement, CheckIn, Goal, Member, Patient, Plan, Step, Target
from service.domain.rules import check_plan, errors
from service.domain.types import Coding, Concept, Identifier, Note, Quantity, Range

AT = "2026-11-22T09:00:00+00:00"


def make_plan() -> Plan:
    return Plan(id="plan-1", patient=Patient(mrn="MRN-1", display_name="Sam"))


def goal(goal_id: str = "g1", **kw) -> Goal:
    return Goal(id=goal_id, description=Concept(text="Sleep through the night"), **kw)


def test_proposing_a_goal_adds_it_and_bumps_the_version():
    plan = make_plan()
    propose_goal(plan, goal(), AT)
    assert [g.id for g in plan.goals] == ["g1"]
    assert plan.version == 1
    assert plan.created_at == plan.updated_at == AT


def test_a_goal_id_is_used_once_per_plan():
    plan = make_plan()
    propose_goal(plan, goal(), AT)
    with pytest.raises(Conflict):
        propose_goal(plan, goal(), AT)
    assert plan.version == 1 and len(plan.goals) == 1


@pytest.mark.parametrize("status", ["completed", "revoked"])
def test_a_closed_plan_takes_no_new_goals(status):
    plan = make_plan()
    plan.status = status
    with pytest.raises(RuleViolation):
        propose_goal(plan, goal(), AT)
    assert plan.goals == [] and plan.version == 0


def test_no_goals_are_proposed_while_the_patient_declines_goal_setting():
    plan = make_plan()
    plan.goal_setting = "declined"
    with pytest.raises(RuleViolation, match="not to set goals"):
        propose_goal(plan, goal(), AT)


def test_a_goal_enters_as_proposed():
    with pytest.raises(RuleViolation):
        propose_goal(make_plan(), goal(lifecycle_status="active"), AT)


def test_find_or_join_reuses_members_by_identifier_and_the_patient_by_kind():
    plan = make_plan()
    nurse = find_or_join(plan, "practitioner", Identifier("urn:npi", "1"), "Nurse A")
    assert find_or_join(plan, "practitioner", Identifier("urn:npi", "1")) is nurse
    other = find_or_join(plan, "practitioner", Identifier("urn:npi", "2"))
    assert (nurse.id, other.id) == ("practitioner-1", "practitioner-2")
    assert find_or_join(plan, "patient") is find_or_join(plan, "patient")
    with pytest.raises(Conflict):
        find_or_join(plan, "patient", member_id=nurse.id)


def full_plan() -> Plan:
    plan = make_plan()
    plan.team = [Member(id="patient", kind="patient"), Member(id="dietitian", kind="practitioner", name="D")]
    plan.goals = [
        goal(
            "g1",
            lifecycle_status="active",
            proposed_by="patient",
            agreements=[Agreement("patient", "agree"), Agreement("dietitian", "pending")],
            targets=[Target(measure=Concept(text="weight"), range=Range(Quantity(Decimal("50.5")), None))],
            check_ins=[CheckIn(id="c1", at=AT, measure=Concept(text="weight"), quantity=Quantity(Decimal(51)))],
            notes=[Note("first week went well", author_member="dietitian", time=AT)],
        ),
        goal("g2", replaces="g1"),
    ]
    plan.steps = [Step(id="s1", title="Plan meals", goal_ids=["g1"], owner="dietitian")]
    return plan


def test_a_well_formed_plan_has_no_issues():
    assert check_plan(full_plan()) == []


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda p: setattr(p, "status", "banana"), "status"),
        (lambda p: setattr(p.goals[0], "lifecycle_status", "banana"), "goals[0].lifecycle_status"),
        (lambda p: p.goals[0].agreements.append(Agreement("stranger", "agree")), "goals[0].agreements[2].member_id"),
        (lambda p: setattr(p.goals[0].agreements[0], "status", "maybe"), "goals[0].agreements[0].status"),
        (lambda p: p.goals[0].agreements.append(Agreement("patient", "agree")), "goals[0].agreements"),
        (lambda p: setattr(p.goals[0].targets[0], "measure", None), "goals[0].targets[0].measure"),
        (lambda p: setattr(p.goals[0].targets[0], "text", "and text"), "goals[0].targets[0]"),
        (lambda p: setattr(p.goals[1], "replaces", "nope"), "goals[1].replaces"),
        (lambda p: setattr(p.steps[0], "owner", "stranger"), "steps[0].owner"),
        (lambda p: setattr(p.steps[0], "goal_ids", ["nope"]), "steps[0].goal_ids"),
        (lambda p: setattr(p.goals[0].agreements[0], "status", "disagree"), "goals[0].lifecycle_status"),
        (lambda p: setattr(p, "goal_setting", "declined"), "goals[0].lifecycle_status"),
        (lambda p: p.goals.append(goal("g1")), "goals"),
    ],
)
def test_each_rule_names_the_path_it_breaks(change, path):
    plan = full_plan()
    change(plan)
    assert path in [i.path for i in errors(check_plan(plan))]


def test_an_active_goal_without_the_patients_agreement_only_warns():
    plan = full_plan()
    plan.goals[0].agreements = []
    issues = check_plan(plan)
    assert errors(issues) == []
    assert [(i.path, i.severity) for i in issues] == [("goals[0].agreements", "warning")]


def test_plan_json_round_trips_every_field():
    plan = full_plan()
    plan.review_every = Quantity(Decimal(3), unit="mo", system="http://unitsofmeasure.org", code="mo")
    plan.goals[0].priority = Concept([Coding("http://terminology.hl7.org/CodeSystem/goal-priority", "high-priority")])
    plan.goals[0].fhir_extra = {"extension": [{"url": "http://x", "valueString": "kept"}]}
    data = codec.to_dict(plan)
    assert data["goals"][0]["check_ins"][0]["quantity"]["value"] == 51
    assert "comparator" not in data["goals"][0]["targets"][0]["range"]["low"]
    assert codec.from_dict(Plan, data) == plan
