"""Absolute references, end to end: `planbridge plans import`, then a push to the real local FHIR server.

A plan's patient (or a team member) named by an absolute reference:

- on the configured FHIR server (FHIR_BASE_URL): stored relative (`Patient/123`) at the import, so every server
  holds the reference it names itself by (Medplum refuses any absolute reference when it checks them on write);
- on another server: refused at the import, naming the field. The push could never write it: HAPI refuses it
  (`HAPI-0507 ... not configured to allow external references`), Medplum too. Before, it was taken, and the push
  named `Patient/123` of OUR server (some other patient, or none) in the Provenance and in the plan's `patient`
  link, while the CarePlan named the other server's;
- held by a plan pulled from a server that allows such references (the local server's
  `--allow-external-references`): pushed as it is, and never linked as a Patient of ours.

See docs/references.md.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from service.api.container import utcnow
from service.cli import main
from service.convert import load_plan, to_fhir
from service.devfhir import LocalFhirServer
from service.domain.model import Patient
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.adopt import record_import
from service.sync.engine import SyncEngine
from tests.support import FIXTURES, settings

HOSPITAL = "http://hospital.example/mrn"
ELSEWHERE = "https://other.example/fhir"


class World:
    """A database, a local FHIR server, and `planbridge plans import` run as the operator runs it."""

    def __init__(self, database, fhir_url: str) -> None:
        self.engine, self.url = database
        self.settings = settings(fhir_base_url=fhir_url)
        self.ehr = FhirClient(fhir_url, timeout=10)
        self.sync = SyncEngine(UnitOfWork(self.engine), FhirClient(fhir_url, timeout=10), self.settings, utcnow)

    def patient(self) -> dict:
        patient = {"resourceType": "Patient", "identifier": [{"system": HOSPITAL, "value": uuid.uuid4().hex[:10]}]}
        return self.ehr.request("POST", "Patient", json=patient).json()

    def plan_document(self) -> dict:
        plan = json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text())
        plan["id"] = f"plan-abs-{uuid.uuid4().hex[:8]}"
        return plan

    def bundle(self, patient_reference: str) -> dict:
        """The knee plan as a FHIR Bundle whose resources name the Patient by `patient_reference`, without it."""
        bundle, _ = to_fhir(self.plan_document(), self.settings)
        created = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        document = json.loads(json.dumps(bundle).replace(json.dumps(created), json.dumps(patient_reference)))
        document["entry"] = [e for e in document["entry"] if e["resource"]["resourceType"] != "Patient"]
        return document

    def cli_import(self, document: dict):
        env = {
            "DATABASE_URL": self.url,
            "FHIR_BASE_URL": self.settings.fhir_base_url,
            "PLANBRIDGE_IDENTIFIER_BASE": self.settings.identifier_base,
            "PLANBRIDGE_MRN_SYSTEM": self.settings.mrn_system,
        }
        return CliRunner().invoke(main, ["plans", "import", "-"], input=json.dumps(document), env=env)

    def stored(self, plan_id: str):
        with UnitOfWork(self.engine) as uow:
            return uow.plans.get(plan_id)

    def on_server(self, rtype: str, kind: str, value: str) -> dict | None:
        return self.ehr.find_one(rtype, {"identifier": f"{self.settings.identifier_base}/{kind}|{value}"})

    def links(self, plan_id: str) -> dict[str, dict]:
        return {row["key"]: row for row in self.sync.status(plan_id).resources}


@pytest.fixture
def world(database, fhir_profile_url):
    return World(database, fhir_profile_url)


def test_an_import_naming_its_patient_on_another_server_is_refused_naming_the_field(world):
    """Bug fixed: the import took it, and the push then named our `Patient/<id>` in the Provenance and linked it as
    the plan's Patient, or was refused for ever by a server that does not allow external references."""
    ours = world.patient()  # the other server's Patient has the id of one of ours: still not ours
    document = world.bundle(f"{ELSEWHERE}/Patient/{ours['id']}")
    plan_id = next(e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "CarePlan")

    result = world.cli_import(document)

    assert result.exit_code == 1, result.output
    assert "patient.fhir_reference" in result.stderr and f"{ELSEWHERE}/" in result.stderr
    assert "another FHIR server" in result.stderr
    assert world.stored(plan_id["identifier"][0]["value"]) is None  # nothing stored, no push queued


def test_an_import_naming_its_patient_by_the_server_s_own_url_is_stored_and_pushed_relative(world):
    """Bug fixed: the plan kept `[base]/Patient/<id>` and the push wrote it into the CarePlan, Goals and CareTeam
    as it came, which Medplum (checking references on write) refuses."""
    patient = world.patient()
    base = world.settings.fhir_base_url
    result = world.cli_import(world.bundle(f"{base}/Patient/{patient['id']}/_history/1"))
    assert result.exit_code == 0, result.output
    plan_id = result.stdout.strip()
    assert world.stored(plan_id).patient.fhir_reference == f"Patient/{patient['id']}/_history/1"

    pushed = world.sync.push(plan_id)

    assert pushed.status == "in_sync"
    careplan = world.on_server("CarePlan", "plan", plan_id)
    assert careplan is not None and careplan["subject"]["reference"] == f"Patient/{patient['id']}/_history/1"
    links = world.links(plan_id)
    assert (links["patient"]["type"], links["patient"]["id"]) == ("Patient", patient["id"])


# ---- a plan that holds another server's Patient: one pulled from a server that allows such references ----


@pytest.fixture(scope="module")
def external_url() -> Iterator[str]:
    """A local server (hapi profile) of its own, with --allow-external-references (HAPI's
    `allow_external_references: true`): it holds references to other servers, so a pulled plan may name one."""
    with LocalFhirServer(profile="hapi", options=["--allow-external-references"]) as server:
        yield server.base_url


def test_a_plan_holding_another_server_s_patient_is_pushed_naming_it_as_is_and_never_linked(database, external_url):
    """Bug fixed: the push reduced `https://other.example/fhir/Patient/<id>` to `Patient/<id>` and recorded OUR
    Patient <id> (here: a real one, someone else) as the plan's `patient` link."""
    world = World(database, external_url)
    someone_else = world.patient()
    foreign = f"{ELSEWHERE}/Patient/{someone_else['id']}"
    plan, _ = load_plan(world.plan_document())
    plan.patient = Patient(fhir_reference=foreign)  # as a pull keeps what the server holds
    now = utcnow()
    with UnitOfWork(world.engine) as uow:
        plan.touch(now.isoformat())
        uow.plans.save(plan)
        record_import(uow, plan, None, now)
        uow.commit()

    pushed = world.sync.push(plan.id)

    assert pushed.status == "in_sync"
    careplan = world.on_server("CarePlan", "plan", plan.id)
    assert careplan is not None and careplan["subject"]["reference"] == foreign
    goals = [world.ehr.read(*ref["reference"].split("/")) for ref in careplan["goal"]]
    assert goals and {g["subject"]["reference"] for g in goals} == {foreign}
    assert "patient" not in world.links(plan.id), "another server's Patient was linked as one of ours"
    assert world.sync.push(plan.id).requests == 0  # and it stays in sync
