"""Two patients whose MRNs differ only in case, on a server that matches identifiers without case.

The local server (both profiles, as Medplum does) finds `identifier=urn:mrn|ABC-1` for a Patient whose MRN
is `abc-1`. A push finding its plan's Patient by MRN took that single match as the patient: the plan of one
patient was written, subject and all, onto another patient's record. A match now counts only when one of its
identifiers is exactly the plan's MRN (`FhirClient.find_by_identifier`); a server answering only with a case
twin stops the push (nothing written, the plan `failed` with decision stop, no MRN in the error), since
creating the Patient on the server's own conditional terms would find the twin again. The same holds for
`sync pull --patient` by MRN.
"""

import json
import uuid

import pytest
import responses

from service.api.container import utcnow
from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.fhir.errors import FhirAmbiguous
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from tests.support import FIXTURES, MRN_SYSTEM, settings


class World:
    def __init__(self, database, fhir_url: str) -> None:
        self.engine = database[0]
        self.settings = settings(fhir_base_url=fhir_url)
        self.ehr = FhirClient(fhir_url, timeout=10)
        self.sync = SyncEngine(UnitOfWork(self.engine), FhirClient(fhir_url, timeout=10), self.settings, utcnow)

    def patient(self, mrn: str) -> dict:
        patient = {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": mrn}]}
        return self.ehr.request("POST", "Patient", json=patient).json()

    def plan(self, mrn: str) -> str:
        document = json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text())
        document["id"] = f"plan-twin-{uuid.uuid4().hex[:8]}"
        document["patient"] = {"mrn": mrn, "display_name": document["patient"].get("display_name")}
        with UnitOfWork(self.engine) as uow:
            uow.plans.save(codec.from_dict(Plan, document))
            uow.commit()
        return document["id"]

    def careplan(self, plan_id: str) -> dict | None:
        return self.ehr.find_one("CarePlan", {"identifier": f"{self.settings.identifier_base}/plan|{plan_id}"})


@pytest.fixture
def world(database, fhir_profile_url):
    return World(database, fhir_profile_url)


def test_a_push_never_takes_a_patient_whose_mrn_differs_only_in_case(world):
    lower = f"mrn-twin-{uuid.uuid4().hex[:8]}"
    other_patient = world.patient(lower)
    assert world.ehr.search("Patient", {"identifier": f"{MRN_SYSTEM}|{lower.upper()}"}), "the server ignores case"
    plan_id = world.plan(lower.upper())

    with pytest.raises(FhirAmbiguous) as raised:
        world.sync.push(plan_id)

    assert raised.value.decision == "stop"
    assert world.careplan(plan_id) is None  # nothing written onto the other patient's record
    status = world.sync.status(plan_id)
    assert status.status == "failed" and "without regard to case" in status.last_error
    assert lower.upper() not in status.last_error and lower not in status.last_error
    assert "patient" not in {row["key"] for row in status.resources}
    assert world.ehr.read("Patient", other_patient["id"])["identifier"] == other_patient["identifier"]


def test_a_push_takes_the_patient_whose_mrn_matches_exactly_beside_a_case_twin(world):
    lower = f"mrn-twin-{uuid.uuid4().hex[:8]}"
    world.patient(lower)
    patient = world.patient(lower.upper())
    plan_id = world.plan(lower.upper())

    assert world.sync.push(plan_id).status == "in_sync"

    careplan = world.careplan(plan_id)
    assert careplan is not None and careplan["subject"]["reference"] == f"Patient/{patient['id']}"
    links = {row["key"]: row for row in world.sync.status(plan_id).resources}
    assert links["patient"]["id"] == patient["id"]


def test_pull_by_mrn_never_takes_a_case_twin(world):
    lower = f"mrn-twin-{uuid.uuid4().hex[:8]}"
    world.patient(lower)

    with pytest.raises(FhirAmbiguous):
        world.sync.pull_patient(lower.upper())


@responses.activate
def test_find_by_identifier_keeps_exact_matches_only():
    base = "https://fhir.example/r4"
    client = FhirClient(base, timeout=5)

    def answer(*identifiers: str) -> None:
        entries = [
            {"resource": {"resourceType": "Patient", "id": f"p{i}", "identifier": [{"system": "urn:mrn", "value": v}]}}
            for i, v in enumerate(identifiers)
        ]
        body = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
        responses.reset()
        responses.add(responses.GET, f"{base}/Patient", json=body)

    answer()
    assert client.find_by_identifier("Patient", "urn:mrn", "A-1") is None
    answer("a-1", "A-1")
    assert client.find_by_identifier("Patient", "urn:mrn", "A-1")["id"] == "p1"
    answer("a-1")
    with pytest.raises(FhirAmbiguous, match="without regard to case") as raised:
        client.find_by_identifier("Patient", "urn:mrn", "A-1")
    assert "a-1" not in str(raised.value) and "A-1" not in str(raised.value)
    answer("A-1", "A-1")
    with pytest.raises(FhirAmbiguous, match="matched 2"):
        client.find_by_identifier("Patient", "urn:mrn", "A-1")
