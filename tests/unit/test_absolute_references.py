"""Absolute references: one on the configured FHIR server is named relative, one on another server is never rebased.

`https://other.example/fhir/Patient/123` names the other server's Patient 123. Reducing it to `Patient/123` (as
`mappings.reference_parse.local_reference` did for every literal reference) points the push at our server's
Patient 123: some other patient, or none. So: on the configured base (FHIR_BASE_URL) an absolute reference
becomes `Type/id`; on another server it stays as it is; and an import naming one is refused at the door
(`service.sync.push_bundle.on_configured_server`), since the server planbridge writes to refuses it (HAPI-0507).
See docs/references.md.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mappings.reference_parse import is_foreign, local_reference, relative_to, same_server
from service.domain.model import Goal, Member, Patient, Plan
from service.domain.types import Concept, Ref
from service.sync.provenance import Carried, member_reference, provenance_entry
from service.sync.push_bundle import _patient_reference, on_configured_server
from tests.support import settings

OURS = "https://fhir.hospital.example/baseR4"
ELSEWHERE = "https://other.example/fhir"
BASE = "https://planbridge.test/id"


def _plan(patient_ref: str | None = None, *team: Member, goals: list[Goal] | None = None) -> Plan:
    return Plan(id="p1", patient=Patient(mrn="123", fhir_reference=patient_ref), team=list(team), goals=goals or [])


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (f"{OURS}/", True),
        (OURS, True),
        ("HTTPS://FHIR.Hospital.Example/baseR4/", True),  # scheme and host have no case
        ("https://fhir.hospital.example:443/baseR4/", True),  # the default port is no port
        ("https://fhir.hospital.example/BASER4/", False),  # a path has case
        ("http://fhir.hospital.example/baseR4/", False),  # another scheme: another server
        ("https://fhir.hospital.example:8443/baseR4/", False),
        ("https://fhir.hospital.example/baseR4/other/", False),
        ("https://fhir.hospital.example/", False),
        (f"{ELSEWHERE}/", False),
        (None, False),
    ],
)
def test_same_server_compares_bases_as_urls(base: str | None, expected: bool) -> None:
    assert same_server(base, OURS) is expected
    assert same_server(base, f"{OURS}/") is expected


def test_no_base_is_the_same_server_as_nothing() -> None:
    assert not same_server(f"{OURS}/", None)
    assert not same_server(f"{OURS}/", "not a url")


@pytest.mark.parametrize(
    ("reference", "local", "relative"),
    [
        (f"{OURS}/Patient/1", "Patient/1", "Patient/1"),
        (f"{OURS}/Patient/1/_history/2", "Patient/1", "Patient/1/_history/2"),
        (f"{OURS}/Patient/1/", "Patient/1", "Patient/1"),
        ("Patient/1/_history/2", "Patient/1", "Patient/1/_history/2"),
        (f"{ELSEWHERE}/Patient/1", f"{ELSEWHERE}/Patient/1", f"{ELSEWHERE}/Patient/1"),  # never rebased
        (f"{ELSEWHERE}/Patient/1/_history/2", f"{ELSEWHERE}/Patient/1/_history/2", f"{ELSEWHERE}/Patient/1/_history/2"),
        ("urn:uuid:0d8f5b3e-6c1a-4f7e-9b62-3f8e2d1c4a5b", "urn:uuid:0d8f5b3e-6c1a-4f7e-9b62-3f8e2d1c4a5b", None),
        ("#pr1", "#pr1", None),
        ("Patient?identifier=s|v", "Patient?identifier=s|v", None),
    ],
)
def test_a_reference_is_named_relative_on_our_server_only(reference: str, local: str, relative: str | None) -> None:
    assert local_reference(reference, OURS) == local
    assert relative_to(reference, OURS) == (relative or reference)


def test_with_no_server_base_no_absolute_reference_is_rebased() -> None:
    """Bug fixed: `local_reference` reduced any absolute reference to `Type/id`, whatever its server."""
    for reference in (f"{ELSEWHERE}/Patient/123", f"{OURS}/Patient/123"):
        assert local_reference(reference) == reference
        assert relative_to(reference, None) == reference
        assert is_foreign(reference, None)
    assert local_reference("Patient/123/_history/1") == "Patient/123"


def test_is_foreign_tells_another_server_s_literal_reference() -> None:
    assert is_foreign(f"{ELSEWHERE}/Patient/1", OURS)
    assert not is_foreign(f"{OURS}/Patient/1", OURS)
    for other in ("Patient/1", "#p1", "urn:uuid:0d8f5b3e-6c1a-4f7e-9b62-3f8e2d1c4a5b", "Patient?x=y", None, 7):
        assert not is_foreign(other, OURS)


# --- the push: the Patient it names, the Provenance's authors ---


def test_a_push_keeps_a_patient_on_another_server_as_its_absolute_reference() -> None:
    """Bug fixed: `https://other.example/fhir/Patient/123` was pushed as `Patient/123` (our Patient 123, someone
    else or no one) in the Provenance, and recorded as the plan's `patient` link."""
    foreign = f"{ELSEWHERE}/Patient/123"
    named = _patient_reference(None, None, settings(fhir_base_url=OURS), _plan(foreign))  # type: ignore[arg-type]
    assert named == (foreign, 0)


def test_a_push_names_a_patient_on_its_own_server_by_type_and_id() -> None:
    ours = _plan(f"{OURS}/Patient/123/_history/4")
    assert _patient_reference(None, None, settings(fhir_base_url=OURS), ours) == ("Patient/123", 0)  # type: ignore[arg-type]


def test_provenance_names_a_member_on_another_server_by_their_absolute_reference() -> None:
    """Bug fixed: the Provenance's author `https://other.example/fhir/Practitioner/5` was `Practitioner/5`."""
    foreign = f"{ELSEWHERE}/Practitioner/5"
    member = Member(id="dr", kind="practitioner", fhir_reference=foreign)
    plan = _plan(None, member)
    assert member_reference(plan, member, [], {}, None, BASE, lambda r, b: None, OURS) == foreign
    assert member_reference(plan, member, [], {}, None, BASE, lambda r, b: None) == foreign  # no base: as it is
    ours = Member(id="dr", kind="practitioner", fhir_reference=f"{OURS}/Practitioner/5")
    assert member_reference(_plan(None, ours), ours, [], {}, None, BASE, lambda r, b: None, OURS) == "Practitioner/5"


def test_provenance_names_a_patient_on_another_server_by_their_absolute_reference() -> None:
    foreign = f"{ELSEWHERE}/Patient/123"
    patient = Member(id="patient", kind="patient")
    entry = {"fullUrl": "urn:uuid:0d8f5b3e-6c1a-4f7e-9b62-3f8e2d1c4a5b", "resource": {"resourceType": "Goal"}}
    provenance = provenance_entry(
        _plan(foreign, patient),
        [entry],
        Carried(through=1, senders=("ehr",), members=("patient",)),
        {},
        foreign,
        BASE,
        datetime(2026, 1, 1, tzinfo=UTC),
        lambda r, b: None,
        server_base=OURS,
    )
    assert provenance is not None
    authors = [a["who"]["reference"] for a in provenance["resource"]["agent"] if "reference" in a["who"]]
    assert authors == [foreign]


# --- the door: an import naming another server's resource is refused, one of ours stored relative ---


def test_an_import_naming_another_server_s_resources_is_refused_field_by_field() -> None:
    goal = Goal(
        id="walk",
        description=Concept(text="Walk"),
        addresses=[Ref(reference=f"{ELSEWHERE}/Condition/c1"), Ref(reference="Condition/c2")],
    )
    member = Member(id="dr", kind="practitioner", fhir_reference=f"{ELSEWHERE}/Practitioner/5")
    plan = _plan(f"{ELSEWHERE}/Patient/123", member, goals=[goal])
    plan.careplan_extra = {"encounter": {"reference": f"{ELSEWHERE}/Encounter/9"}}
    _, foreign = on_configured_server(plan, OURS)
    assert sorted(foreign) == [
        "careplan_extra.encounter.reference",
        "goals[0].addresses[0].reference",
        "patient.fhir_reference",
        "team[0].fhir_reference",
    ]
    why = foreign["patient.fhir_reference"]
    assert f"{ELSEWHERE}/" in why and OURS in why and "HAPI-0507" in why
    assert "123" not in why  # the base is named, never the id (an EHR's key of a patient)


def test_an_import_naming_our_server_absolutely_is_stored_relative() -> None:
    goal = Goal(id="walk", description=Concept(text="Walk"), addresses=[Ref(reference=f"{OURS}/Condition/c1")])
    member = Member(id="dr", kind="practitioner", fhir_reference=f"{OURS}/Practitioner/5/_history/2")
    plan = _plan(f"{OURS}/Patient/123", member, goals=[goal])
    plan.careplan_extra = {"encounter": {"reference": f"{OURS}/Encounter/9"}, "status": "active"}
    stored, foreign = on_configured_server(plan, OURS)
    assert foreign == {}
    assert stored.patient.fhir_reference == "Patient/123"
    assert stored.team[0].fhir_reference == "Practitioner/5/_history/2"
    assert stored.goals[0].addresses[0].reference == "Condition/c1"
    assert stored.careplan_extra == {"encounter": {"reference": "Encounter/9"}, "status": "active"}
    assert plan.patient.fhir_reference == f"{OURS}/Patient/123"  # the plan given is left as it was


def test_an_import_with_relative_references_only_is_the_plan_itself() -> None:
    plan = _plan("Patient/1", Member(id="dr", kind="practitioner", fhir_reference="Practitioner/5"))
    assert on_configured_server(plan, OURS) == (plan, {})


def test_with_no_fhir_base_url_an_import_naming_any_absolute_reference_is_refused() -> None:
    _, foreign = on_configured_server(_plan(f"{OURS}/Patient/123"), None)
    assert (
        list(foreign) == ["patient.fhir_reference"] and "FHIR_BASE_URL is not set" in foreign["patient.fhir_reference"]
    )
