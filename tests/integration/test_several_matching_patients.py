"""A push whose plan's MRN matches several Patients stops, is recorded with a reason, and backs off.

Several matching Patients are an error, never a guess (README, "On the FHIR server"): the push writes
nothing. It used to be recorded with `last_error` only and `last_outcome` null, unlike the server's own
refusals that stop a push (docs/sync.md's table): the search is planbridge's, so no server wrote an
OperationOutcome. planbridge now writes one (`multiple-matches`), and the stop is the documented one: one
attempt per backoff window (a Patient search, nothing sent), the plan's later pushes waiting behind it, and
once the Patients are merged in the EHR the replayed entry pushes the plan onto the one left.
"""

import json
import uuid
from datetime import timedelta

import pytest
import responses
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from service.api.metrics import StoreCollector
from service.api.plans import replay_outbox_entry
from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.fhir.errors import FhirAmbiguous, FhirMultipleMatches
from service.store.uow import UnitOfWork
from service.sync.engine import sync_status
from service.sync.worker import OutboxWorker
from tests.integration.test_push_conditional_patient import HOSPITAL, Imported
from tests.support import FIXTURES, MRN_SYSTEM, Clock, settings

ATTEMPTS = 3


def test_several_patients_matching_the_mrn_stop_the_push_with_an_outcome_and_back_off(engine, fhir_profile_url):
    config = settings(fhir_base_url=fhir_profile_url, outbox_max_attempts=ATTEMPTS)
    clock = Clock()
    client = FhirClient(fhir_profile_url, timeout=10, sleep=lambda _s: None)
    worker = OutboxWorker(UnitOfWork(engine), client, config, clock)
    ehr = FhirClient(fhir_profile_url, timeout=10)
    mrn = f"MRN-DUP-{uuid.uuid4().hex[:8]}"
    patient = {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": mrn}]}
    first, second = (ehr.request("POST", "Patient", json=patient).json() for _ in range(2))
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text()))
    plan.id = f"plan-dup-{uuid.uuid4().hex[:6]}"
    plan.patient.mrn = mrn
    with UnitOfWork(engine) as uow:  # the plan, and two team events' pushes queued behind each other
        plan.touch(clock().isoformat())
        uow.plans.save(plan)
        for _ in range(2):
            uow.outbox.add(plan.id, "push_plan", None, None, clock())
        uow.commit()

    windows = []
    for _ in range(2 * ATTEMPTS):
        before = client.requests_sent
        worker.run_until_idle()
        windows.append(client.requests_sent - before)
        clock.now += timedelta(minutes=20)  # past any backoff (capped at 15 minutes)
    # One Patient search an attempt and nothing ever sent; one attempt a backoff window, the second entry waiting
    # behind the first until it is parked dead (then it is taken at once, as after any stop), then nothing more.
    assert windows == [1] * (ATTEMPTS - 1) + [2] + [1] * (ATTEMPTS - 1) + [0], windows

    status = sync_status(UnitOfWork(engine), plan.id)
    assert status.status == "failed"
    assert status.last_error == "FhirAmbiguous: Patient search matched 2 resources"
    assert status.last_outcome == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "multiple-matches",
                "diagnostics": "planbridge: Patient search matched 2 resources",
            }
        ],
    }
    assert status.resources == []  # nothing written
    with UnitOfWork(engine) as uow:
        entries = uow.outbox.list(plan.id)
    assert [(e.status, e.attempts) for e in entries] == [("dead", ATTEMPTS)] * 2
    registry = CollectorRegistry()
    registry.register(StoreCollector(engine))
    assert 'planbridge_plans_failed{reason="FhirAmbiguous"} 1.0' in generate_latest(registry).decode()

    # The EHR merges the two records (one is deleted); the stopped entry is replayed and the plan lands on it.
    ehr.request("DELETE", f"Patient/{second['id']}")
    replay_outbox_entry(UnitOfWork(engine), entries[-1].id, clock())
    worker.run_until_idle()
    status = sync_status(UnitOfWork(engine), plan.id)
    assert status.status == "in_sync" and status.last_outcome is None
    links = {row["key"]: row for row in status.resources}
    assert links["patient"]["id"] == first["id"]


@responses.activate
def test_a_patient_matching_only_by_case_stops_with_an_outcome_naming_no_mrn():
    base = "https://fhir.example/r4"
    twin = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:mrn", "value": "abc-1"}]}
    body = {"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [{"resource": twin}]}
    responses.add(responses.GET, f"{base}/Patient", json=body)

    with pytest.raises(FhirAmbiguous) as raised:
        FhirClient(base, timeout=5).find_by_identifier("Patient", "urn:mrn", "ABC-1")

    (issue,) = raised.value.outcome["issue"]
    assert issue["severity"] == "error" and issue["code"] == "business-rule"
    assert issue["diagnostics"].startswith("planbridge: Patient search by an identifier of system urn:mrn matched 1")
    assert "abc-1" not in json.dumps(raised.value.outcome).lower()


def test_a_conditional_patient_reference_matching_several_patients_stops_with_an_outcome(database, fhir_profile_url):
    world = Imported(database, fhir_profile_url)
    mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    world.patient(mrn)
    world.patient(mrn)
    plan_id = world.cli_import(world.bundle(f"Patient?identifier={HOSPITAL}|{mrn}"))

    with pytest.raises(FhirMultipleMatches):
        world.sync.push(plan_id)

    status = world.sync.status(plan_id)
    assert status.status == "failed" and status.last_error.startswith("FhirMultipleMatches: several Patients match")
    (issue,) = status.last_outcome["issue"]
    assert issue["code"] == "multiple-matches" and issue["diagnostics"].startswith("planbridge: several Patients")
    assert mrn not in json.dumps(status.last_outcome)
