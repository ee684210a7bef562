"""A person known by a long identifier: events take identifier values of up to 200 characters (an EHR's may be
longer), and planbridge remembers where each person lives on the FHIR server under a key of at most 160
characters (fhir_links.local_key). Found by the poison-event property test on PostgreSQL: the push of an accepted
event failed with "value too long for type character varying(160)" and was retried for ever, a 202 broken."""

import pytest

from service.store.uow import UnitOfWork
from service.sync.push_bundle import person_key
from tests.support import goal_event
from tests.sync_model_support import SyncWorld

LONG = "9" * 200  # the longest identifier value an event may carry
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


@pytest.fixture
def world(engine, fhir_base_url):
    return SyncWorld(engine, fhir_base_url)


def test_a_person_with_a_200_character_identifier_is_pushed_linked_and_credited(world):
    event = goal_event()
    plan_id = event["data"]["plan_id"]
    gp = {"system": "http://hl7.org/fhir/sid/us-npi", "value": LONG}
    event["data"]["goal"]["proposed_by"] = {"kind": "practitioner", "member_id": "gp", "identifier": gp}
    assert world.team("goal.proposed", **event["data"])[0] == 202
    assert world.team("note.added", plan_id=plan_id, text="Walked twice", author="gp", goal_id="goal-walk")[0] == 202

    assert world.sync.push(plan_id).status == "in_sync"
    with UnitOfWork(world.db) as uow:
        links = {link.local_key: link for link in uow.links.for_plan(plan_id)}
    key = person_key(LONG)
    assert len(key) <= 160 and links[key].resource_type == "Practitioner"
    practitioner = world.client.request("GET", f"Practitioner/{links[key].fhir_id}").json()
    assert {"system": gp["system"], "value": LONG} in [
        {k: i[k] for k in ("system", "value")} for i in practitioner["identifier"]
    ]
    provenance = world.client.request("GET", "Provenance", params={"target": f"CarePlan/{links['careplan'].fhir_id}"})
    authors = {
        agent["who"].get("reference")
        for entry in provenance.json().get("entry", [])
        for agent in entry["resource"]["agent"]
        if agent["type"]["coding"][0]["code"] == "author"
    }
    assert f"Practitioner/{links[key].fhir_id}" in authors  # the Provenance finds the person by the same key
    assert world.sync.push(plan_id).requests == 0


def test_short_identifier_values_keep_their_readable_key():
    assert person_key("1234567890") == "person:1234567890"
    assert person_key("x" * 150) == "person:" + "x" * 150
    assert person_key("x" * 151) != person_key("x" * 152) and person_key("x" * 151).startswith("person:sha256:")
