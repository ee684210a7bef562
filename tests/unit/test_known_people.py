"""The people a pull does not read (not on the CareTeam), named as the plan knows them (mappings.refs.Resolver's
`people`, service.sync.pull_links.known_people). See tests/integration/test_push_pull_round_trip.py."""

from types import SimpleNamespace

from mappings.refs import Resolver
from service.domain.model import Member, Patient, Plan
from service.domain.types import Identifier
from service.sync.pull_links import known_people

BASE = "https://planbridge.example.org/id"
NPI = "http://hl7.org/fhir/sid/us-npi"


def link(key: str, reference: str) -> SimpleNamespace:
    rtype, fhir_id = reference.split("/")
    return SimpleNamespace(local_key=key, resource_type=rtype, fhir_id=fhir_id)


def plan(*team: Member) -> Plan:
    return Plan(id="plan-1", patient=Patient(mrn="MRN-1"), team=list(team))


def test_a_reference_the_input_lacks_is_the_member_the_plan_knows_by_it():
    surgeon = Member(id="surgeon", kind="practitioner", name="Mr Vaughan", in_team=False)
    resolver = Resolver({}, "Patient/42", BASE, {"Practitioner/5": surgeon})

    assert resolver.member_for({"reference": "Practitioner/5", "display": "Mr I. Vaughan"}) == "surgeon"
    assert resolver.member_for({"reference": "Practitioner/6"}) == "practitioner-6"  # no one the plan knows

    read = resolver.members["surgeon"]
    assert (read.kind, read.name, read.identifier, read.fhir_reference, read.in_team) == (
        "practitioner",
        "Mr I. Vaughan",  # the EHR's display, as always
        None,
        None,
        False,
    )


def test_a_person_the_input_carries_or_of_another_kind_is_read_as_before():
    surgeon = Member(id="surgeon", kind="practitioner")
    carried = {"Practitioner/5": {"resourceType": "Practitioner", "id": "5"}}
    read = Resolver(carried, "Patient/42", BASE, {"Practitioner/5": surgeon})
    assert read.member_for({"reference": "Practitioner/5"}) == "practitioner-5"  # the resource says who it is
    carer = Resolver({}, "Patient/42", BASE, {"RelatedPerson/5": surgeon})
    assert carer.member_for({"reference": "RelatedPerson/5"}) == "relatedperson-5"


def test_known_people_by_the_pushed_persons_links_and_by_literal_references():
    surgeon = Member(id="surgeon", kind="practitioner", in_team=False)
    npi = Member(id="psych", kind="practitioner", identifier=Identifier(NPI, "1456789012"))
    ehr = Member(id="gp", kind="practitioner", fhir_reference="Practitioner/gp-1")
    contained = Member(id="pr1", kind="practitioner", fhir_reference="#pr1")
    patient = Member(id="patient", kind="patient")
    links = [
        link("person:plan-1/surgeon", "Practitioner/5"),
        link("person:1456789012", "Practitioner/9"),
        link("goal:g", "Goal/3"),
        link("patient", "Patient/1"),
    ]

    people = known_people(plan(patient, surgeon, npi, ehr, contained), links, BASE)

    assert people == {"Practitioner/5": surgeon, "Practitioner/9": npi, "Practitioner/gp-1": ehr}


def test_a_reference_two_members_claim_names_neither():
    one = Member(id="a", kind="practitioner", fhir_reference="Practitioner/7")
    two = Member(id="b", kind="practitioner", fhir_reference="Practitioner/7")

    assert known_people(plan(one, two), [], BASE) == {}
