"""CarePlans that carry their Goals and CareTeam as `contained` resources (10 of the 11 CarePlan
examples of the FHIR R4 spec do), read as the plan's goals and team and written back as the EHR had them.

fixtures/fhir/spec holds those examples, each in a collection Bundle without its Patient (the spec
references the Patient and does not include it): so they also show a referenced-but-absent Patient.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mappings.bundle import bundle_to_plan, plan_to_bundle
from mappings.fhir import validate_bundle
from service.domain import codec
from service.domain.model import Plan
from service.domain.rules import check_plan, errors
from service.domain.types import Note
from tests.support import FIXTURES, MRN_SYSTEM

BASE = "https://planbridge.example.org/id"
SPEC_FILES = sorted((FIXTURES / "fhir" / "spec").glob("careplan-example-*.json"))
# the goals and team members each example holds (the patient is on every EHR-authored plan's team)
EXPECTED = {
    "careplan-example-GPVisit": (["Complete consultation"], ["Doctor Dave", "Nurse Nancy"]),
    "careplan-example-f001-heart": (["recovery surgery on heart of patient"], ["P. Voigt"]),
    "careplan-example-f002-lung": (["recovery surgery on lung of patient"], ["M.I.M. Versteegh"]),
    "careplan-example-f003-pharynx": (["recovery surgery on pharynx of patient"], ["E.M. van den broek"]),
    "careplan-example-f201-renal": (
        ["Re-established renal function with at least healthy nutrients."],
        ["Dokter Bronsig", "Nurse Carla Espinosa"],
    ),
    "careplan-example-f202-malignancy": (
        ["Elimination of the spread of metastases of nasopharyngeal carcinoma"],
        ["Dokter Bronsig"],
    ),
    "careplan-example-f203-sepsis": (
        ["Check whether further treatment is needed"],
        ["Dokter Bronsig", "Dokter Zuurstof"],
    ),
    "careplan-example-integrate": (["Acceptance of diagnosis", "Absence of suicidal ideation"], []),
    "careplan-example-pregnancy": (["Maintain normal blood pressure"], ["Mavis Midwife", "Oscar Obstetrician"]),
}


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def careplan_of(bundle: dict) -> dict:
    (careplan,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan"]
    return careplan


def written_back(careplan: dict) -> dict:
    """The CarePlan as planbridge writes it, but for what it adds: its own identifier, no id or meta."""
    out = {k: v for k, v in careplan.items() if k not in ("id", "meta")}
    out["identifier"] = [i for i in out.get("identifier", []) if not i.get("system", "").startswith(BASE)]
    if not out["identifier"]:
        del out["identifier"]
    return out


def as_it_came(careplan: dict) -> dict:
    return {k: v for k, v in careplan.items() if k not in ("id", "meta")}


def test_the_spec_examples_are_here():
    assert sorted(p.stem for p in SPEC_FILES) == sorted(EXPECTED)


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.stem for p in SPEC_FILES])
def test_a_spec_example_is_valid_r4_and_reads_its_contained_goals_and_team(path):
    original = load(path)
    validate_bundle(original)
    plan = bundle_to_plan(copy.deepcopy(original), BASE, MRN_SYSTEM)
    goals, people = EXPECTED[path.stem]
    assert [g.description.text for g in plan.goals] == goals  # not 0 goals
    assert sorted(m.name for m in plan.team if m.in_team and m.kind != "patient") == people
    assert errors(check_plan(plan)) == []
    # the Patient is referenced but not in the Bundle: the plan keeps the reference, its MRN unknown
    assert plan.patient.mrn is None
    assert plan.patient.fhir_reference == careplan_of(original)["subject"]["reference"]


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.stem for p in SPEC_FILES])
def test_a_spec_example_round_trips_to_the_same_careplan(path):
    """from-fhir -> to-fhir gives back the same CarePlan: the same contained resources in the same
    order, the same `#id` references, the subject as it came; only planbridge's identifier is added."""
    original = load(path)
    plan = bundle_to_plan(copy.deepcopy(original), BASE, MRN_SYSTEM)
    document = codec.to_dict(plan)
    again = codec.from_dict(Plan, json.loads(json.dumps(document)))  # through plan JSON, as convert does
    emitted = plan_to_bundle(again, BASE, MRN_SYSTEM)
    validate_bundle(emitted)
    # no Patient written, no Goal or CareTeam outside the CarePlan: they are contained, as they came
    assert [e["resource"]["resourceType"] for e in emitted["entry"]] == ["CarePlan"]
    assert written_back(careplan_of(emitted)) == as_it_came(careplan_of(original))
    # and the plan read back from that Bundle writes the same Bundle again
    assert plan_to_bundle(bundle_to_plan(copy.deepcopy(emitted), BASE, MRN_SYSTEM), BASE, MRN_SYSTEM) == emitted


def test_a_changed_contained_goal_is_written_back_contained_with_the_change():
    original = load(FIXTURES / "fhir" / "spec" / "careplan-example-GPVisit.json")
    plan = bundle_to_plan(copy.deepcopy(original), BASE, MRN_SYSTEM)
    (goal,) = plan.goals
    goal.lifecycle_status = "active"
    goal.notes.append(Note(text="booked for Tuesday"))
    careplan = careplan_of(plan_to_bundle(plan, BASE, MRN_SYSTEM))
    assert careplan["goal"] == [{"reference": "#goal"}]
    assert [c["id"] for c in careplan["contained"]] == ["p1", "careteam", "goal"]
    contained_goal = careplan["contained"][2]
    assert contained_goal["lifecycleStatus"] == "active" and contained_goal["note"] == [{"text": "booked for Tuesday"}]
    assert "identifier" not in contained_goal  # no planbridge identifier inside the CarePlan
    expected = copy.deepcopy(careplan_of(original)["contained"][2])
    expected.update(lifecycleStatus="active", note=[{"text": "booked for Tuesday"}])
    assert contained_goal == expected


def test_contained_people_stay_contained_and_steps_keep_their_contained_goals():
    plan = bundle_to_plan(load(FIXTURES / "fhir" / "spec" / "careplan-example-pregnancy.json"), BASE, MRN_SYSTEM)
    midwife = next(m for m in plan.team if m.name == "Mavis Midwife")
    assert (midwife.kind, midwife.fhir_reference, midwife.role.text) == ("practitioner", "#pr1", "Lead Maternity Carer")
    assert plan.steps[0].owner == midwife.id
    integrate = bundle_to_plan(load(FIXTURES / "fhir" / "spec" / "careplan-example-integrate.json"), BASE, MRN_SYSTEM)
    g1, g2 = integrate.goals
    assert [s.goal_ids for s in integrate.steps] == [[g2.id], [g1.id, g2.id]]
    assert g1.addresses[0].reference == "#p1"


def test_a_goal_the_team_adds_to_a_contained_plan_is_its_own_resource():
    plan = bundle_to_plan(load(FIXTURES / "fhir" / "spec" / "careplan-example-f001-heart.json"), BASE, MRN_SYSTEM)
    added = copy.deepcopy(plan.goals[0])
    added.id, added.fhir_extra, added.notes = "walk-daily", {}, []
    plan.goals.append(added)
    bundle = plan_to_bundle(plan, BASE, MRN_SYSTEM)
    validate_bundle(bundle)
    goals = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Goal"]
    assert len(goals) == 1 and goals[0]["request"]["url"].endswith("|careplan-f001/walk-daily")
    careplan = careplan_of(bundle)
    assert careplan["goal"] == [{"reference": "#goal"}, {"reference": goals[0]["fullUrl"]}]
    assert [c["resourceType"] for c in careplan["contained"]] == ["CareTeam", "Goal"]


def test_a_contained_goal_the_team_removes_leaves_the_careplan():
    original = load(FIXTURES / "fhir" / "spec" / "careplan-example-integrate.json")
    plan = bundle_to_plan(copy.deepcopy(original), BASE, MRN_SYSTEM)
    plan.steps = [s for s in plan.steps if plan.goals[0].id not in s.goal_ids]
    del plan.goals[0]
    careplan = careplan_of(plan_to_bundle(plan, BASE, MRN_SYSTEM))
    assert [c["id"] for c in careplan["contained"]] == ["p1", "g2"]
    assert careplan["goal"] == [{"reference": "#g2"}]


def test_contained_goals_are_read_when_the_patient_is_included_too():
    bundle = load(FIXTURES / "fhir" / "spec" / "careplan-example-f201-renal.json")
    patient = {"resourceType": "Patient", "id": "f201", "identifier": [{"system": MRN_SYSTEM, "value": "MRN-f201"}]}
    bundle["entry"].append({"fullUrl": "http://hl7.org/fhir/Patient/f201", "resource": patient})
    plan = bundle_to_plan(bundle, BASE, MRN_SYSTEM)
    assert plan.patient.mrn == "MRN-f201" and len(plan.goals) == 1
    assert [str(t.range.low.value) for t in plan.goals[0].targets] == ["3.5"]
    assert {m.name for m in plan.team if m.kind == "practitioner"} == {"Dokter Bronsig", "Nurse Carla Espinosa"}
