"""An imported plan naming a team member by a conditional reference, pushed to the real local server.

An imported Bundle may name a CareTeam participant as `Practitioner?identifier=system|value` (the EHR's
Practitioner, not carried in the Bundle). The plan keeps such a participant as it came (no person planbridge
models), and the push used to send the search text as it was. The servers resolve it themselves, but each in
its own way (https://hl7.org/fhir/R4/http.html#trules): HAPI sets the reference to `Practitioner/<id>` and
keeps the participant's `display`; Medplum replaces the whole Reference with its own (`createReference`: the
Practitioner's name as `display`, or none); and on no match HAPI answers 404 `HAPI-1091`, Medplum 400. Now the
push resolves every conditional reference of the Bundle as it does the patient's (one search each, before it
sends: one match, `Type/<id>` wherever the Bundle names it; none: `ReferenceNotOnServer`; several:
`FhirMultipleMatches`, a stop), so every server holds the same literal reference with the display the plan
has, and nothing is written when a search fails.
"""

import json
import uuid

import pytest

from service.fhir.errors import FhirMultipleMatches
from service.sync.push import ReferenceNotOnServer
from tests.integration.test_push_conditional_patient import HOSPITAL, Imported

NPI = "http://hl7.org/fhir/sid/us-npi"


class WithTeam(Imported):
    """`Imported`, with the physiotherapist named by a conditional reference instead of carried."""

    def practitioner(self, npi: str, family: str = "Kowalczyk") -> dict:
        practitioner = {
            "resourceType": "Practitioner",
            "identifier": [{"system": NPI, "value": npi}],
            "name": [{"family": family, "given": ["Marta"]}],
        }
        return self.ehr.request("POST", "Practitioner", json=practitioner).json()

    def bundle_naming(self, patient_reference: str, physio_reference: str) -> dict:
        document = self.bundle(patient_reference)
        physio = next(e for e in document["entry"] if e["resource"]["resourceType"] == "Practitioner")
        text = json.dumps(document).replace(json.dumps(physio["fullUrl"]), json.dumps(physio_reference))
        document = json.loads(text)
        document["entry"] = [e for e in document["entry"] if e.get("fullUrl") != physio_reference]
        return document

    def careteam(self, plan_id: str) -> dict:
        careplan = self.on_server("CarePlan", "plan", plan_id)
        assert careplan is not None
        return self.ehr.read(*careplan["careTeam"][0]["reference"].split("/"))


@pytest.fixture
def world(database, fhir_profile_url):
    return WithTeam(database, fhir_profile_url)


def imported(world: WithTeam, npi: str) -> tuple[str, dict]:
    mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    patient = world.patient(mrn)
    conditional = f"Practitioner?identifier={NPI}|{npi}"
    plan_id = world.cli_import(world.bundle_naming(f"Patient?identifier={HOSPITAL}|{mrn}", conditional))
    return plan_id, patient


def test_a_team_member_named_conditionally_is_pushed_naming_that_practitioner(world):
    npi = uuid.uuid4().hex[:10]
    world.practitioner(uuid.uuid4().hex[:10], family="Other")  # a Practitioner the search must not pick
    physio = world.practitioner(npi)
    plan_id, patient = imported(world, npi)

    pushed = world.sync.push(plan_id)

    assert pushed.status == "in_sync"
    members = {p["member"]["reference"]: p["member"] for p in world.careteam(plan_id)["participant"]}
    # named literally, with the display the plan has, on every server (Medplum would put its own in its place)
    assert members[f"Practitioner/{physio['id']}"] == {
        "reference": f"Practitioner/{physio['id']}",
        "display": "Marta Kowalczyk, PT",
    }
    assert f"Patient/{patient['id']}" in members
    assert not [r for r in members if "?" in r]
    assert world.sync.push(plan_id).requests == 0  # nothing changed: no search, nothing sent
    # Read back, the participant is the EHR's Practitioner, under the plan's name on every server (a server left
    # to resolve it could rename them: Medplum's display is the Practitioner's own), and the plan now knows them
    # by the NPI the reference searched for; pushing again sends nothing and the server keeps naming them so.
    world.sync.pull_plans([plan_id])
    with world.sync.pusher.uow as uow:
        member = next(m for m in uow.plans.get(plan_id).team if m.id == "physio")
    assert (member.name, member.identifier.system, member.identifier.value) == ("Marta Kowalczyk, PT", NPI, npi)
    assert world.sync.push(plan_id).requests == 0
    physio_participant = next(p for p in world.careteam(plan_id)["participant"] if p.get("id") == "physio")
    assert physio_participant["member"] == {
        "reference": f"Practitioner/{physio['id']}",
        "display": "Marta Kowalczyk, PT",
    }


def test_a_team_member_matching_no_practitioner_stops_the_push_and_writes_nothing(world):
    npi = uuid.uuid4().hex[:10]
    plan_id, _ = imported(world, npi)

    with pytest.raises(ReferenceNotOnServer):
        world.sync.push(plan_id)

    assert world.on_server("CarePlan", "plan", plan_id) is None
    status = world.sync.status(plan_id)
    assert status.status == "failed" and "no Practitioner matches" in status.last_error
    assert npi not in status.last_error  # an identifier's value is never in an error


def test_a_team_member_matching_several_practitioners_stops_the_push(world):
    npi = uuid.uuid4().hex[:10]
    world.practitioner(npi)
    world.practitioner(npi)
    plan_id, _ = imported(world, npi)

    with pytest.raises(FhirMultipleMatches) as raised:
        world.sync.push(plan_id)

    assert raised.value.decision == "stop"
    assert world.on_server("CarePlan", "plan", plan_id) is None
    assert world.sync.status(plan_id).status == "failed"
