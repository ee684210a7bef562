"""The Patient's identity is never rewritten: the MRN keeps the system the EHR gave it, the subject
reference is written back exactly as it came, and a Patient referenced but absent still converts."""

from __future__ import annotations

import copy

import pytest

from mappings.bundle import bundle_to_plan, plan_to_bundle
from mappings.fhir import validate_bundle
from service.domain import codec
from service.domain.errors import MappingError
from service.domain.model import Patient, Plan
from service.planschema import shape_issues
from tests.support import MRN_SYSTEM

BASE = "https://planbridge.example.org/id"
OID = "urn:oid:1.2.36.146.595.217.0.1"
MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}


def ehr_bundle(identifiers: list[dict] | None, subject_extra: dict | None = None, with_patient: bool = True) -> dict:
    subject = {"reference": "Patient/p-1", "display": "Kim Example", **(subject_extra or {})}
    careplan = {
        "resourceType": "CarePlan",
        "id": "cp-1",
        "status": "active",
        "intent": "plan",
        "subject": subject,
        "contained": [
            {
                "resourceType": "Goal",
                "id": "g",
                "lifecycleStatus": "active",
                "description": {"text": "walk"},
                "subject": {"reference": "Patient/p-1", "display": "Kim Example"},
            },
        ],
        "goal": [{"reference": "#g"}],
    }
    entries = [{"fullUrl": "http://ehr.example.org/fhir/CarePlan/cp-1", "resource": careplan}]
    if with_patient:
        patient = {"resourceType": "Patient", "id": "p-1", "identifier": identifiers}
        entries.append({"fullUrl": "http://ehr.example.org/fhir/Patient/p-1", "resource": patient})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def careplan_of(bundle: dict) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan")


@pytest.mark.parametrize(
    "identifiers, expected",
    [
        ([{"system": OID, "value": "12345"}], (OID, "12345")),
        ([{"system": "urn:other", "value": "x"}, {"system": MRN_SYSTEM, "value": "M-1"}], (None, "M-1")),
        ([{"system": "urn:other", "value": "x"}, {"type": MR, "system": OID, "value": "12345"}], (OID, "12345")),
        ([{"system": "urn:ssn", "value": "999"}, {"system": OID, "value": "12345"}], ("urn:ssn", "999")),
    ],
    ids=["its own system", "the configured system first", "then one typed MR", "else the first"],
)
def test_the_mrn_keeps_the_system_the_ehr_gave_it(identifiers, expected):
    bundle = ehr_bundle(identifiers)
    validate_bundle(bundle)
    plan = bundle_to_plan(bundle, BASE, MRN_SYSTEM)
    assert (plan.patient.mrn_system, plan.patient.mrn) == expected
    assert plan.patient.fhir_reference == "Patient/p-1"  # the EHR's own plan: its Patient named as it was


def test_a_plan_with_its_patients_reference_never_writes_the_patient():
    subject_identifier = {"identifier": {"system": OID, "value": "12345"}, "type": "Patient"}
    original = ehr_bundle([{"use": "official", "type": MR, "system": OID, "value": "12345"}], subject_identifier)
    plan = bundle_to_plan(copy.deepcopy(original), BASE, MRN_SYSTEM)
    bundle = plan_to_bundle(plan, BASE, MRN_SYSTEM)
    validate_bundle(bundle)
    assert "Patient" not in [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert careplan_of(bundle)["subject"] == careplan_of(original)["subject"]  # display, identifier, type kept
    assert careplan_of(bundle)["contained"][0]["subject"]["reference"] == "Patient/p-1"
    # and the plan JSON says so, and reads back the same
    document = codec.to_dict(plan)
    assert document["patient"] == {
        "mrn": "12345",
        "display_name": "Kim Example",
        "mrn_system": OID,
        "fhir_reference": "Patient/p-1",
        "fhir_extra": subject_identifier,
    }
    assert shape_issues(document) == []
    assert codec.from_dict(Plan, document) == plan


def test_a_conditional_create_uses_the_plans_own_mrn_system():
    plan = Plan(id="p", patient=Patient(mrn="12345", mrn_system=OID))
    (patient, *_) = plan_to_bundle(plan, BASE, MRN_SYSTEM)["entry"]
    assert patient["resource"]["identifier"] == [{"system": OID, "value": "12345"}]
    assert patient["request"]["ifNoneExist"] == f"identifier={OID}|12345"
    default = plan_to_bundle(Plan(id="p", patient=Patient(mrn="12345")), BASE, MRN_SYSTEM)["entry"][0]
    assert default["request"]["ifNoneExist"] == f"identifier={MRN_SYSTEM}|12345"  # no system: the configured one


def test_a_patient_referenced_but_absent_converts_and_keeps_the_reference():
    original = ehr_bundle(None, {"display": "Kim Example"}, with_patient=False)
    plan = bundle_to_plan(copy.deepcopy(original), BASE, MRN_SYSTEM)
    assert (plan.patient.mrn, plan.patient.fhir_reference) == (None, "Patient/p-1")
    assert [g.description.text for g in plan.goals] == ["walk"]
    document = codec.to_dict(plan)
    assert "mrn" not in document["patient"] and shape_issues(document) == []
    bundle = plan_to_bundle(codec.from_dict(Plan, document), BASE, MRN_SYSTEM)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["CarePlan"]
    assert careplan_of(bundle)["subject"] == {"reference": "Patient/p-1", "display": "Kim Example"}


def test_a_plan_needs_an_mrn_or_a_reference():
    assert [i.path for i in shape_issues({"id": "p", "patient": {"display_name": "Kim"}})] == ["patient.mrn"]
    with pytest.raises(MappingError, match="neither an MRN nor a FHIR reference"):
        plan_to_bundle(Plan(id="p", patient=Patient()), BASE, MRN_SYSTEM)


def test_existing_plan_json_keeps_meaning_the_configured_system():
    plan = codec.from_dict(Plan, {"id": "p", "patient": {"mrn": "MRN-1"}})
    assert (plan.patient.mrn_system, plan.patient.fhir_reference, plan.patient.fhir_extra) == (None, None, None)
    assert codec.to_dict(plan)["patient"] == {"mrn": "MRN-1"}
