from decimal import Decimal

import pytest

from mappings.fhir import issues_of, validate
from mappings.goal import goal_from_fhir, goal_to_fhir, target_from_fhir, target_to_fhir
from mappings.refs import Refs, Resolver
from service.domain.errors import MappingError
from service.domain.model import Agreement, Goal, Target
from service.domain.types import Coding, Concept, Quantity

BASE = "https://planbridge.example.org/id"


def refs() -> Refs:
    return Refs(BASE, "Patient/42", members={"patient": "Patient/42", "diet": "Practitioner/7"}, goals={"g": "Goal/1"})


def resolver(resources=None) -> Resolver:
    return Resolver(resources or {}, "Patient/42", BASE)


def test_goal_maps_to_valid_fhir_with_our_identifier_and_acceptances():
    goal = Goal(
        id="goal-walk",
        description=Concept(text="Walk to the park with my daughter"),
        priority=Concept([Coding("http://terminology.hl7.org/CodeSystem/goal-priority", "medium-priority")]),
        proposed_by="patient",
        agreements=[Agreement("patient", "agree"), Agreement("diet", "pending", Concept(text="low"))],
    )
    resource = goal_to_fhir(goal, "plan-1", refs())
    validate(resource)
    assert issues_of(resource) == []
    assert resource["identifier"] == [{"system": f"{BASE}/goal", "value": "plan-1/goal-walk"}]
    assert resource["expressedBy"] == {"reference": "Patient/42"}
    acceptance = resource["extension"][1]
    assert acceptance["url"] == "http://hl7.org/fhir/StructureDefinition/goal-acceptance"
    assert acceptance["extension"] == [
        {"url": "individual", "valueReference": {"reference": "Practitioner/7"}},
        {"url": "status", "valueCode": "pending"},
        {"url": "priority", "valueCodeableConcept": {"text": "low"}},
    ]


@pytest.mark.parametrize(
    "element",
    [
        {"measure": {"text": "w"}, "detailQuantity": {"value": 70.5, "unit": "kg"}, "dueDate": "2027"},
        {"measure": {"text": "w"}, "detailRange": {"low": {"value": 1}, "high": {"value": 2}}},
        {"measure": {"text": "w"}, "detailRatio": {"numerator": {"value": 1}, "denominator": {"value": 3}}},
        {"measure": {"text": "w"}, "detailCodeableConcept": {"coding": [{"system": "s", "code": "c"}]}},
        {"measure": {"text": "w"}, "detailString": "calmer", "dueDuration": {"value": 3, "unit": "mo"}},
        {"measure": {"text": "w"}, "detailBoolean": False},
        {"measure": {"text": "w"}, "detailInteger": 0, "id": "t1", "extension": [{"url": "u", "valueString": "v"}]},
    ],
)
def test_every_target_detail_and_due_type_round_trips(element):
    assert target_to_fhir(target_from_fhir(element), "t") == element


def test_a_target_with_two_details_or_no_measure_is_refused():
    with pytest.raises(MappingError, match="gol-1"):
        target_to_fhir(Target(quantity=Quantity(Decimal(3))), "t")
    with pytest.raises(MappingError):
        target_to_fhir(Target(measure=Concept(text="m"), text="a", integer=1), "t")


def test_a_minimal_ehr_goal_is_accepted_and_written_back_unchanged():
    ehr = {
        "resourceType": "Goal",
        "id": "77",
        "lifecycleStatus": "active",
        "description": {"coding": [{"system": "http://snomed.info/sct", "code": "289169006"}]},
        "subject": {"reference": "Patient/42"},
    }
    read = goal_from_fhir(ehr, resolver(), BASE)
    assert read.goal.id == "goal-77" and read.plan_id is None
    back = goal_to_fhir(read.goal, "p", refs())
    back["identifier"] = [i for i in back["identifier"] if i["system"] != f"{BASE}/goal"] or None
    assert {k: v for k, v in back.items() if v is not None} == {k: v for k, v in ehr.items() if k != "id"}


def test_unknown_extensions_codes_and_elements_are_kept():
    ehr = {
        "resourceType": "Goal",
        "lifecycleStatus": "on-hold",
        "id": "5",
        "extension": [{"url": "http://ehr.example/ext/flag", "valueBoolean": True}],
        "identifier": [{"system": "http://ehr.example/goal", "value": "G-5"}],
        "achievementStatus": {"coding": [{"system": "http://ehr.example/ach", "code": "weird"}]},
        "description": {"text": "x"},
        "subject": {"reference": "Patient/42"},
        "statusReason": "flu",
        "outcomeCode": [{"text": "kept as is"}],
        "outcomeReference": [{"reference": "Observation/404"}],
        "note": [{"text": "n", "authorString": "Dr Who", "time": "2026-01-01"}],
    }
    read = goal_from_fhir(ehr, resolver(), BASE)
    back = goal_to_fhir(read.goal, "p", refs())
    back["identifier"] = back["identifier"][:-1]
    assert back == {k: v for k, v in ehr.items() if k != "id"}


def test_references_to_what_is_not_a_person_are_kept_not_guessed():
    ehr = {
        "resourceType": "Goal",
        "id": "9",
        "lifecycleStatus": "active",
        "description": {"text": "x"},
        "subject": {"reference": "Patient/42"},
        "expressedBy": {"reference": "PractitionerRole/7"},
        "note": [{"text": "n", "authorReference": {"reference": "Organization/1"}}],
    }
    read = goal_from_fhir(ehr, resolver(), BASE)
    assert read.goal.proposed_by is None and read.goal.notes == []
    back = goal_to_fhir(read.goal, "p", refs())
    assert (back["expressedBy"], back["note"]) == (ehr["expressedBy"], ehr["note"])
    with pytest.raises(MappingError, match="identifier or a server id"):
        goal_from_fhir({k: v for k, v in ehr.items() if k != "id"}, resolver(), BASE)


def test_a_member_not_in_the_team_is_a_mapping_error_with_its_path():
    goal = Goal(id="g", description=Concept(text="x"), agreements=[Agreement("stranger", "agree")])
    with pytest.raises(MappingError) as err:
        goal_to_fhir(goal, "p", refs(), "goals[3]")
    assert "goals[3].agreements[0].member_id" in err.value.data["errors"]


def test_structure_and_binding_problems_name_the_element():
    bad = {
        "resourceType": "Goal",
        "lifecycleStatus": "banana",
        "description": {"text": "x"},
        "subject": {"reference": "Patient/1"},
        "target": [{"detailString": "y"}],
    }
    paths = {i.path for i in issues_of(bad)}
    assert {"Goal.lifecycleStatus", "Goal.target[0]"} <= paths
    structural = issues_of({**bad, "lifecycleStatus": "active", "target": [{"dueDate": "not-a-date"}]})
    assert any(i.path.startswith("Goal.target") for i in structural)
    with pytest.raises(MappingError, match="unknown resource type"):
        validate({"resourceType": "Banana"})
