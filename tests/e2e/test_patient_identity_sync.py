"""The Patient's identity through the CLI and a push to the real local FHIR server: the identifiers
an EHR gave its Patient and the CarePlan's subject reference come back byte for byte."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from click.testing import CliRunner

from service.api.container import utcnow
from service.cli import main
from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from tests.support import FIXTURES, MRN_SYSTEM, settings

OID = "urn:oid:1.2.36.146.595.217.0.1"
MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}


@pytest.fixture
def env():
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    values.update(PLANBRIDGE_IDENTIFIER_BASE="https://planbridge.test/identity/id", PLANBRIDGE_MRN_SYSTEM=MRN_SYSTEM)
    return values


def test_convert_from_fhir_takes_a_bundle_whose_patient_is_referenced_but_absent(env, tmp_path):
    """The R4 spec's own example: its Patient is referenced, not included; its goals and team are contained."""
    source = FIXTURES / "fhir" / "spec" / "careplan-example-f001-heart.json"
    runner = CliRunner()
    result = runner.invoke(main, ["convert", "from-fhir", str(source)], env=env)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["patient"] == {"display_name": "P. van de Heuvel", "fhir_reference": "Patient/f001"}
    assert [g["description"]["text"] for g in plan["goals"]] == ["recovery surgery on heart of patient"]
    (tmp_path / "plan.json").write_text(result.stdout)
    back = runner.invoke(main, ["convert", "to-fhir", str(tmp_path / "plan.json")], env=env)
    assert back.exit_code == 0, back.output
    (entry,) = json.loads(back.stdout)["entry"]  # the CarePlan alone: its Goal and CareTeam inside, no Patient
    careplan = json.loads(source.read_text())["entry"][0]["resource"]
    assert entry["resource"]["subject"] == careplan["subject"]
    assert entry["resource"]["contained"] == careplan["contained"]


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def test_a_push_leaves_the_patients_identifiers_and_the_subject_as_the_ehr_had_them(sqlite_engine, fhir_profile_url):
    ehr = FhirClient(fhir_profile_url, timeout=10)
    identifiers = [
        {"use": "usual", "type": MR, "system": OID, "value": "12345", "period": {"start": "2001-05-06"}},
        {"system": "urn:oid:2.16.840.1.113883.2.4.6.3", "value": f"bsn-{uuid.uuid4().hex[:8]}"},
    ]
    patient = ehr.request("POST", "Patient", json={"resourceType": "Patient", "identifier": identifiers}).json()
    subject = {"reference": f"Patient/{patient['id']}", "display": "Kim Example"}
    careplan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": subject,
        "contained": [
            {
                "resourceType": "Goal",
                "id": "goal",
                "lifecycleStatus": "active",
                "description": {"text": "walk"},
                "subject": subject,
            },
        ],
        "goal": [{"reference": "#goal"}],
    }
    careplan = ehr.request("POST", "CarePlan", json=careplan).json()
    before = ehr.request("GET", f"Patient/{patient['id']}").json()
    # the EHR's Bundle: the CarePlan with its Patient, as a search with _include gives it
    bundle = ehr.request("GET", "CarePlan", params={"_id": careplan["id"], "_include": "CarePlan:subject"}).json()
    config = settings(fhir_base_url=fhir_profile_url)
    result = CliRunner().invoke(
        main,
        ["convert", "from-fhir", "-"],
        input=json.dumps(bundle),
        env={"PLANBRIDGE_IDENTIFIER_BASE": config.identifier_base, "PLANBRIDGE_MRN_SYSTEM": MRN_SYSTEM},
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    plan = codec.from_dict(Plan, document)
    plan.title = "Walking, with Kim"  # the team changes the plan: it has to be pushed
    plan.touch(utcnow().isoformat())
    with UnitOfWork(sqlite_engine) as uow:
        uow.plans.save(plan)
        uow.commit()
    client = FhirClient(fhir_profile_url, timeout=10)
    pushed = SyncEngine(UnitOfWork(sqlite_engine), client, config, utcnow).push(plan.id)
    assert pushed.status == "in_sync"
    after = ehr.request("GET", f"Patient/{patient['id']}").json()
    assert json.dumps(after["identifier"], sort_keys=True) == json.dumps(before["identifier"], sort_keys=True)
    assert after["meta"]["versionId"] == before["meta"]["versionId"]  # the Patient was not written at all
    # the CarePlan planbridge wrote names the same Patient, exactly as the EHR did
    written = client.find_one("CarePlan", {"identifier": f"{config.identifier_base}/plan|{plan.id}"})
    assert written is not None and written["subject"] == subject
    assert written["title"] == "Walking, with Kim" and written["contained"] == careplan["contained"]
    # the plan holds the MRN as the EHR has it, and the EHR's reference to the Patient
    assert document["patient"]["mrn_system"] == OID and document["patient"]["mrn"] == "12345"
    assert document["patient"]["fhir_reference"] == subject["reference"]
