"""mappings.reference_parse.parse_reference: FHIR R4 references taken apart once (https://hl7.org/fhir/R4/references.html),
and each place that reads a reference (an import's subject and team, a notification's focus, a push's Patient,
Provenance agents and transaction Locations) reading it the same way."""

from __future__ import annotations

from typing import Any

import pytest

from mappings.bundle import _literal_type
from mappings.reference_parse import ParsedRef, local_reference, parse_reference
from mappings.refs import Resolver
from service.domain.errors import MappingError
from service.domain.model import Member, Patient, Plan
from service.sync.notifications import _type_id
from service.sync.provenance import member_reference
from service.sync.push_bundle import _patient_reference, parse_location
from service.sync.split import _known_at, location_of
from tests.support import settings

BASE = "https://planbridge.example.org/id"
EHR = "https://ehr.example/fhir"  # the configured FHIR base (FHIR_BASE_URL) of the push tests below
UUID = "urn:uuid:0b7e6f0c-1111-4a4a-8a8a-000000000001"


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/123", ParsedRef("Patient/123", "relative", "Patient", "123")),
        ("Patient/123/_history/2", ParsedRef("Patient/123/_history/2", "relative", "Patient", "123", "2")),
        (
            "https://ehr.example/fhir/Goal/a-1.b",
            ParsedRef(
                "https://ehr.example/fhir/Goal/a-1.b", "absolute", "Goal", "a-1.b", None, "https://ehr.example/fhir/"
            ),
        ),
        (
            "http://localhost:8103/fhir/R4/Goal/5/_history/7",
            ParsedRef(
                "http://localhost:8103/fhir/R4/Goal/5/_history/7",
                "absolute",
                "Goal",
                "5",
                "7",
                "http://localhost:8103/fhir/R4/",
            ),
        ),
        (UUID, ParsedRef(UUID, "urn", id=UUID[9:])),
        ("urn:oid:1.2.840.113619", ParsedRef("urn:oid:1.2.840.113619", "urn", id="1.2.840.113619")),
        ("#pr1", ParsedRef("#pr1", "contained", id="pr1")),
        ("#", ParsedRef("#", "contained")),  # the containing resource itself
    ],
)
def test_each_form_of_reference_is_taken_apart(reference: str, expected: ParsedRef) -> None:
    assert parse_reference(reference) == expected


@pytest.mark.parametrize(
    "malformed",
    [
        None,
        42,
        "",
        "Patient",
        "patient/1",  # a type starts with a capital
        "Patient/",
        "Patient/1/",  # a Location's trailing slash is its reader's to strip
        "/Patient/1",
        "fhir/Patient/1",  # a relative reference is `Type/id`, not a path ending so
        "Patient/1/_history",
        "Patient/1/_history/",
        "Patient/1/extra",
        "Patient?identifier=http://mrn|123",  # a conditional reference names no one resource
        "ftp://ehr.example/Patient/1",
        "https://Patient/1",  # no base: a host and no path
        "urn:isbn:0451450523",
        "urn:uuid:",
    ],
)
def test_a_malformed_reference_is_none(malformed: Any) -> None:
    assert parse_reference(malformed) is None


def test_a_versioned_reference_names_its_resource_without_the_version() -> None:
    parsed = parse_reference("https://ehr.example/fhir/Practitioner/9/_history/4")
    assert parsed is not None and parsed.literal == ("Practitioner", "9", "4")
    assert parsed.type_id == "Practitioner/9"
    assert local_reference("Practitioner/9/_history/4") == "Practitioner/9"


def test_only_literal_references_have_a_type_and_a_type_id() -> None:
    for other in (UUID, "#pr1"):
        parsed = parse_reference(other)
        assert parsed is not None and not parsed.is_literal
        assert parsed.type is None and parsed.type_id is None and parsed.literal is None
        assert local_reference(other) == other  # named as it is


def test_conforms_tells_the_r4_character_rules_kept() -> None:
    """The R4 regex's id and version are [A-Za-z0-9-.]{1,64} and its base segments [A-Za-z0-9-\\.:%$]: what
    breaks them is still read (an EHR's reference still names its type), and told apart."""
    assert all(
        p is not None and p.conforms
        for p in map(parse_reference, ["Goal/1", "Goal/1/_history/2", "https://h:8080/fhir/Goal/1", UUID, "#c"])
    )
    for loose in ("Goal/a_b", "Goal/" + "x" * 65, "Goal/1/_history/v_2", "https://h/fhir_r4/Goal/1"):
        parsed = parse_reference(loose)
        assert parsed is not None and parsed.type == "Goal" and not parsed.conforms


def test_the_base_is_everything_before_the_last_type_and_id() -> None:
    parsed = parse_reference("https://ehr.example/Patient/1/Observation/2")
    assert parsed is not None and (parsed.base, parsed.type_id) == ("https://ehr.example/Patient/1/", "Observation/2")
    parsed = parse_reference("https://ehr.example/FHIR/Goal/5")
    assert parsed is not None and (parsed.base, parsed.type_id) == ("https://ehr.example/FHIR/", "Goal/5")


# --- mappings.bundle: the type an import's CarePlan.subject names ---


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Group/1", "Group"),
        ("Patient/2/_history/3", "Patient"),
        ("https://other.example/fhir/Group/1", "Group"),
        ("https://other.example/fhir/Patient/2/_history/3", "Patient"),
        (UUID, None),
        ("#p1", None),
        ("Group?identifier=x|1", None),
        (None, None),
        ("not a reference", None),
    ],
)
def test_the_subject_type_of_an_import(reference: Any, expected: str | None) -> None:
    assert _literal_type(reference) == expected


# --- mappings.refs.Resolver: a team member's reference ---


def test_an_absolute_reference_to_a_practitioner_not_in_the_bundle_is_a_member() -> None:
    """Bug fixed: the type of `https://ehr/fhir/Practitioner/5` was read as `https:`, so an EHR's absolute
    reference to a Practitioner it did not include was refused as naming no person."""
    resolver = Resolver({}, "Patient/42", BASE)
    member_id = resolver.member_for({"reference": "https://ehr.example/fhir/Practitioner/5"})
    member = resolver.members[member_id]
    assert (member.kind, member.fhir_reference) == ("practitioner", "https://ehr.example/fhir/Practitioner/5")
    assert resolver.is_person({"reference": "https://ehr.example/fhir/RelatedPerson/6/_history/1"})
    with pytest.raises(MappingError):
        resolver.member_for({"reference": "https://ehr.example/fhir/Organization/7"})
    with pytest.raises(MappingError):
        resolver.member_for({"reference": UUID})  # not in the input: no type to tell


# --- service.sync.notifications: a Backport notification's focus ---


@pytest.mark.parametrize(
    ("focus", "expected"),
    [
        ("Goal/5", "Goal/5"),
        ("Goal/5/_history/3", "Goal/5"),
        ("https://fhir.example/fhir/Goal/5/_history/3", "Goal/5"),
        ("https://another.example/r4/CarePlan/8", "CarePlan/8"),  # only re-read: the pull asks our server
        ("Goal/5/", "Goal/5"),
        (UUID, ""),
        ("#g1", ""),
        ("", ""),
        ("Goal?identifier=x", ""),
        ("a/b/c", ""),  # was `b/c`, looked up as a link of type `b`: now names nothing, so all is re-read
        (None, ""),
    ],
)
def test_the_focus_of_a_notification(focus: Any, expected: str) -> None:
    assert _type_id(focus) == expected


# --- service.sync.provenance / push_bundle: how a push names the Patient and the team ---


def _plan(patient_ref: str | None = None, *team: Member) -> Plan:
    return Plan(id="p1", patient=Patient(mrn="123", fhir_reference=patient_ref), team=list(team))


def _named(plan: Plan, member: Member, patient_ref: str | None = None) -> str | None:
    return member_reference(plan, member, [], {}, patient_ref, BASE, lambda resource, base: None, EHR)


def test_provenance_names_a_versioned_member_reference_by_type_and_id() -> None:
    """Bug fixed: the last two segments of `Practitioner/5/_history/2` are `_history/2`, which the
    Provenance named as its author."""
    member = Member(id="dr", kind="practitioner", fhir_reference="Practitioner/5/_history/2")
    assert _named(_plan(None, member), member) == "Practitioner/5"


def test_provenance_names_an_absolute_member_reference_on_the_configured_server_by_type_and_id() -> None:
    """(One on another server is named as it is: tests/unit/test_absolute_references.py.)"""
    member = Member(id="dr", kind="practitioner", fhir_reference="https://ehr.example/fhir/Practitioner/5")
    assert _named(_plan(None, member), member) == "Practitioner/5"


def test_provenance_does_not_name_a_member_contained_in_the_careplan() -> None:
    """Bug fixed: a member contained in the CarePlan (`#pr1`) was named `#pr1` in the Provenance, which holds
    no `pr1` (ref-1): the server has no resource for them, so they are not named."""
    member = Member(id="pr1", kind="practitioner", fhir_reference="#pr1")
    assert _named(_plan(None, member), member) is None


def test_provenance_names_the_patient_by_type_and_id() -> None:
    patient = Member(id="patient", kind="patient")
    assert _named(_plan(None, patient), patient, "Patient/3") == "Patient/3"
    assert _named(_plan("https://ehr.example/fhir/Patient/4/_history/1", patient), patient) == "Patient/4"


def test_a_push_names_a_versioned_patient_reference_by_type_and_id() -> None:
    """Bug fixed: a plan whose `patient.fhir_reference` is versioned gave the push `_history/2` as its
    Patient (recorded in fhir_links as a resource of type `_history`)."""
    plan = _plan("Patient/1/_history/2")
    assert _patient_reference(None, None, settings(fhir_base_url=EHR), plan) == ("Patient/1", 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/1", "Patient/1"),
        ("https://ehr.example/fhir/Patient/1", "Patient/1"),  # on the configured server
        ("https://elsewhere.example/fhir/Patient/1", "https://elsewhere.example/fhir/Patient/1"),  # never rebased
        ("Patient/1/", "Patient/1"),
        ("Patient?identifier=http://mrn|1", "Patient?identifier=http://mrn|1"),  # as it is
    ],
)
def test_a_push_names_the_patient_reference_it_holds(reference: str, expected: str) -> None:
    assert _patient_reference(None, None, settings(fhir_base_url=EHR), _plan(reference)) == (expected, 0)  # type: ignore[arg-type]


# --- service.sync.push_bundle / split: where a transaction entry landed, and what a PUT names ---


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("Goal/5", ("Goal", "5", None)),
        ("Goal/5/_history/2", ("Goal", "5", "2")),
        ("https://fhir.example/fhir/Goal/5/_history/2", ("Goal", "5", "2")),
        ("https://fhir.example/fhir/Goal/5/", ("Goal", "5", None)),
        ("Goal/5/_history", None),
        ("Goal", None),
        ("", None),
        (UUID, None),
    ],
)
def test_where_a_location_points(location: str, expected: tuple[str, str, str | None] | None) -> None:
    assert parse_location(location) == expected
    assert location_of({"response": {"location": location}}) == expected


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"method": "PUT", "url": "Goal/5", "ifMatch": 'W/"3"'}, ("Goal", "5", "3")),
        ({"method": "PUT", "url": "Goal/5"}, ("Goal", "5", None)),
        ({"method": "PUT", "url": "Goal?identifier=x|1"}, None),
        ({"method": "PUT", "url": "Goal/5/_history/2"}, None),
        ({"method": "PUT", "url": "https://fhir.example/fhir/Goal/5"}, None),
        ({"method": "PUT", "url": "Goal/"}, None),
        ({"method": "POST", "url": "Goal"}, None),
    ],
)
def test_where_a_put_writes(request_: dict[str, str], expected: tuple[str, str, str | None] | None) -> None:
    assert _known_at({"request": request_}) == expected
