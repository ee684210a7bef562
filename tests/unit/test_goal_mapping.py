from datetime import date
from decimal import Decimal

import pytest

from mappings.fhir import validate
from mappings.goal import goal_from_fhir, goal_to_fhir
from service.domain.errors import MappingError
from service.domain.model import Coding, Goal, Identifier, Proposer, Target

BASE = "https://planbridge.example.org/id"
SUBJECT = {"reference": "Patient/42"}


def rich_goal() -> Goal:
    return Goal(
        id="goal-walk",
        description="Walk to the park with my daughter",
        priority="medium-priority",
        proposed_by=Proposer(
            kind="practitioner", identifier=Identifier("http://hl7.org/fhir/sid/us-npi", "9"), display="Dietitian"
        ),
        start_date=date(2026, 11, 22),
        targets=[
            Target(
                measure=Coding("http://loinc.org", "41950-7", "Steps"),
                value=Decimal("4000"),
                comparator=">=",
                unit="/d",
                due_date=date(2027, 1, 31),
            ),
            Target(measure=Coding(display="How I feel"), text="able to go out", due_date=date(2027, 3, 1)),
        ],
    )


def test_goal_maps_to_valid_fhir_with_our_identifier():
    resource = goal_to_fhir(rich_goal(), "plan-1", SUBJECT, BASE)
    validate(resource)
    assert resource["identifier"] == [{"system": f"{BASE}/goal", "value": "plan-1/goal-walk"}]
    assert resource["lifecycleStatus"] == "proposed"
    assert resource["subject"] == SUBJECT
    assert resource["priority"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/goal-priority",
        "code": "medium-priority",
    }
    assert resource["target"][0]["detailQuantity"] == {
        "value": 4000,
        "comparator": ">=",
        "unit": "/d",
        "system": "http://unitsofmeasure.org",
        "code": "/d",
    }
    assert resource["target"][1]["detailString"] == "able to go out"
    assert resource["expressedBy"]["type"] == "Practitioner"


@pytest.mark.parametrize("proposer", [Proposer(kind="patient"), rich_goal().proposed_by, None])
def test_goal_round_trips_through_fhir(proposer):
    goal = rich_goal()
    goal.proposed_by = proposer
    plan_id, back = goal_from_fhir(goal_to_fhir(goal, "plan-1", SUBJECT, BASE), BASE)
    assert plan_id == "plan-1"
    assert back == goal


def test_patient_proposer_is_the_subject():
    goal = rich_goal()
    goal.proposed_by = Proposer(kind="patient")
    assert goal_to_fhir(goal, "p", SUBJECT, BASE)["expressedBy"] == SUBJECT


def test_a_target_value_without_measure_breaks_gol_1():
    goal = Goal(id="g", description="d", targets=[Target(value=Decimal(3))])
    with pytest.raises(MappingError) as err:
        goal_to_fhir(goal, "p", SUBJECT, BASE)
    assert "Goal.target.measure" in err.value.data["errors"]


def test_a_goal_without_our_identifier_is_refused():
    resource = goal_to_fhir(rich_goal(), "p", SUBJECT, BASE)
    resource["identifier"][0]["system"] = "http://elsewhere"
    with pytest.raises(MappingError):
        goal_from_fhir(resource, BASE)


def test_an_unmapped_expressed_by_type_is_refused_not_defaulted():
    resource = goal_to_fhir(rich_goal(), "p", SUBJECT, BASE)
    resource["expressedBy"] = {"reference": "PractitionerRole/7"}
    with pytest.raises(MappingError, match="PractitionerRole"):
        goal_from_fhir(resource, BASE)


def test_validation_names_the_bad_element():
    with pytest.raises(MappingError) as err:
        validate(
            {
                "resourceType": "Goal",
                "lifecycleStatus": "proposed",
                "description": {"text": "x"},
                "subject": {"reference": "Patient/1"},
                "target": [{"dueDate": "not-a-date"}],
            }
        )
    assert any(path.startswith("Goal.target") for path in err.value.data["errors"])
    with pytest.raises(MappingError, match="unknown resource type"):
        validate({"resourceType": "Banana"})
