"""A plan imported from a Bundle naming its Patient by a conditional reference, pushed to the real local server.

`Patient?identifier=system|value` in a transaction (https://hl7.org/fhir/R4/http.html#trules) is a search the
server resolves: HAPI replaces it with `Patient/<id>` of the single match, and refuses the transaction when
none matches (404, "No resources match this search") or several do (412). planbridge resolves it the same way
before it sends (one search), so the Bundle names the Patient literally and every server holds the same
reference, whether it resolves conditional references or not (the local server's Medplum core stores the search
text as it came). Before this, the push wrote the Bundle and then raised ValueError recording the link
(`reference.split("/")`), leaving the plan in flight with nothing recorded.
"""

import json
import uuid

import pytest
from click.testing import CliRunner

from service.api.container import utcnow
from service.cli import main
from service.convert import to_fhir
from service.fhir.client import FhirClient
from service.fhir.errors import FhirMultipleMatches
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.push import PatientNotOnServer
from tests.support import FIXTURES, settings

HOSPITAL = "http://hospital.example/mrn"


class Imported:
    """A database, the local FHIR server, and `planbridge plans import` run as the operator runs it."""

    def __init__(self, database, fhir_url: str) -> None:
        self.engine, self.url = database
        self.settings = settings(fhir_base_url=fhir_url)
        self.ehr = FhirClient(fhir_url, timeout=10)
        self.sync = SyncEngine(UnitOfWork(self.engine), FhirClient(fhir_url, timeout=10), self.settings, utcnow)

    def patient(self, mrn: str) -> dict:
        patient = {"resourceType": "Patient", "identifier": [{"system": HOSPITAL, "value": mrn}]}
        return self.ehr.request("POST", "Patient", json=patient).json()

    def bundle(self, patient_reference: str) -> dict:
        """The knee plan as a FHIR Bundle whose resources name the Patient by `patient_reference`, without it."""
        plan = json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text())
        plan["id"] = f"plan-cond-{uuid.uuid4().hex[:8]}"
        bundle, _ = to_fhir(plan, self.settings)
        created = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        document = json.loads(json.dumps(bundle).replace(json.dumps(created), json.dumps(patient_reference)))
        document["entry"] = [e for e in document["entry"] if e["resource"]["resourceType"] != "Patient"]
        return document

    def cli_import(self, document: dict) -> str:
        env = {
            "DATABASE_URL": self.url,
            "FHIR_BASE_URL": self.settings.fhir_base_url,
            "PLANBRIDGE_IDENTIFIER_BASE": self.settings.identifier_base,
            "PLANBRIDGE_MRN_SYSTEM": self.settings.mrn_system,
        }
        result = CliRunner().invoke(main, ["plans", "import", "-"], input=json.dumps(document), env=env)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    def on_server(self, rtype: str, kind: str, value: str) -> dict | None:
        return self.ehr.find_one(rtype, {"identifier": f"{self.settings.identifier_base}/{kind}|{value}"})


@pytest.fixture
def world(database, fhir_profile_url):
    return Imported(database, fhir_profile_url)


def test_an_imported_plan_naming_its_patient_conditionally_is_pushed_naming_that_patient(world):
    mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    other = world.patient(f"MRN-{uuid.uuid4().hex[:8]}")  # a Patient the search must not pick
    patient = world.patient(mrn)
    conditional = f"Patient?identifier={HOSPITAL}|{mrn}"
    plan_id = world.cli_import(world.bundle(conditional))

    pushed = world.sync.push(plan_id)

    assert pushed.status == "in_sync"
    careplan = world.on_server("CarePlan", "plan", plan_id)
    assert careplan is not None and careplan["subject"]["reference"] == f"Patient/{patient['id']}"
    # every resource naming the Patient names that one, the one the search matches (not `other`)
    careteam = world.ehr.read(*careplan["careTeam"][0]["reference"].split("/"))
    assert careteam["subject"]["reference"] == f"Patient/{patient['id']}"
    goals = [world.ehr.read(*ref["reference"].split("/")) for ref in careplan["goal"]]
    assert goals and {g["subject"]["reference"] for g in goals} == {f"Patient/{patient['id']}"}
    assert other["id"] != patient["id"]
    links = {row["key"]: row for row in world.sync.status(plan_id).resources}
    assert (links["patient"]["type"], links["patient"]["id"]) == ("Patient", patient["id"])
    assert world.sync.push(plan_id).requests == 0  # nothing changed: the Patient is known by its link now


def test_a_conditional_patient_reference_matching_no_patient_stops_the_push_and_writes_nothing(world):
    mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    plan_id = world.cli_import(world.bundle(f"Patient?identifier={HOSPITAL}|{mrn}"))

    with pytest.raises(PatientNotOnServer):
        world.sync.push(plan_id)

    assert world.on_server("CarePlan", "plan", plan_id) is None
    status = world.sync.status(plan_id)
    assert status.status == "failed" and "no Patient matches" in status.last_error
    assert mrn not in status.last_error  # the identifier's value is the patient's: never in an error


def test_a_conditional_patient_reference_matching_several_patients_stops_the_push(world):
    mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    world.patient(mrn)
    world.patient(mrn)
    plan_id = world.cli_import(world.bundle(f"Patient?identifier={HOSPITAL}|{mrn}"))

    with pytest.raises(FhirMultipleMatches) as raised:
        world.sync.push(plan_id)

    assert raised.value.decision == "stop"
    assert world.on_server("CarePlan", "plan", plan_id) is None
    assert world.sync.status(plan_id).status == "failed"
