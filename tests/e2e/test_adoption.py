"""Adopting CarePlans the EHR authored, end to end on the real local FHIR server (both profiles).

The EHR's content is POSTed to the server directly: a Patient known by a hospital OID, a Practitioner,
a CareTeam, and two CarePlans with Goals whose check-in Observations are named in Goal.outcomeReference.
planbridge then adopts them (`sync pull --patient`, `plans adopt`, `POST /plans/adopt`) and the team works
on them. Each test is one of issue #13's broken behaviours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from service.api.app import create_app
from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from tests.cli_support import run_planbridge
from tests.db_fixtures import database  # noqa: F401
from tests.support import settings, signed

OID = "urn:oid:1.2.36.146.595.217.0.1"
KEY = "adoption-key-0123456789abcdef"
BIN = Path(sys.executable).parent / "planbridge"
TYPES = ("CarePlan", "CareTeam", "Goal", "Observation", "Practitioner", "Patient")


class Ehr:
    """What the hospital's EHR authored on the server, and a client to edit it with."""

    def __init__(self, base_url: str) -> None:
        self.fhir = FhirClient(base_url, timeout=10)
        self.mrn = f"12345-{uuid.uuid4().hex[:8]}"
        self.patient = self.create({"resourceType": "Patient", "identifier": [{"system": OID, "value": self.mrn}]})
        subject = {"reference": f"Patient/{self.patient['id']}"}
        npi = {"system": "http://hl7.org/fhir/sid/us-npi", "value": uuid.uuid4().hex[:10]}
        doctor = self.create({"resourceType": "Practitioner", "identifier": [npi], "name": [{"text": "Dr Ames"}]})
        self.doctor = f"Practitioner/{doctor['id']}"
        self.team = self.create(
            {
                "resourceType": "CareTeam",
                "status": "active",
                "subject": subject,
                "participant": [{"member": {"reference": self.doctor, "display": "Dr Ames"}}],
            }
        )
        steps = [self.observation(subject, "Steps per day", 3000 + 500 * n) for n in range(2)]
        self.walk = self.goal(subject, "Walk 5000 steps a day", steps)
        self.sleep = self.goal(subject, "Sleep 7 hours", [])
        self.a = self.create(
            {
                "resourceType": "CarePlan",
                "status": "active",
                "intent": "plan",
                "title": "Cardiac rehabilitation",
                "created": "2026-01-05",
                "subject": subject,
                "author": {"reference": self.doctor},
                "careTeam": [{"reference": f"CareTeam/{self.team['id']}"}],
                "goal": [{"reference": f"Goal/{self.walk['id']}"}, {"reference": f"Goal/{self.sleep['id']}"}],
            }
        )
        weight = [self.observation(subject, "Body weight", 80)]
        self.diet = self.goal(subject, "Lose 5 kg", weight)
        self.b = self.create(  # no CareTeam, no author, no `created`
            {
                "resourceType": "CarePlan",
                "status": "active",
                "intent": "plan",
                "title": "Weight",
                "subject": subject,
                "goal": [{"reference": f"Goal/{self.diet['id']}"}],
            }
        )
        self.steps, self.weight = steps, weight

    def create(self, resource: dict) -> dict:
        return self.fhir.request("POST", resource["resourceType"], json=resource).json()

    def observation(self, subject: dict, text: str, value: int) -> dict:
        return self.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": text},
                "subject": subject,
                "effectiveDateTime": "2026-02-01T10:00:00Z",
                "valueQuantity": {"value": value, "unit": "/d"},
            }
        )

    def goal(self, subject: dict, text: str, outcomes: list[dict]) -> dict:
        return self.create(
            {
                "resourceType": "Goal",
                "lifecycleStatus": "active",
                "description": {"text": text},
                "subject": subject,
                **(
                    {"outcomeReference": [{"reference": f"Observation/{o['id']}"} for o in outcomes]}
                    if outcomes
                    else {}
                ),
            }
        )

    def read(self, resource: dict) -> dict:
        return self.fhir.read(resource["resourceType"], resource["id"])

    def edit(self, resource: dict, **changes) -> dict:
        current = self.read(resource)
        return self.fhir.request(
            "PUT", f"{resource['resourceType']}/{resource['id']}", json={**current, **changes}
        ).json()

    def counts(self) -> dict[str, int]:
        """How many resources of each type the server holds (`_summary=count`)."""
        return {t: self.fhir.request("GET", t, params={"_summary": "count"}).json()["total"] for t in TYPES}


class World:
    """planbridge on its own database, and the EHR on the same FHIR server."""

    def __init__(self, url: str, base_url: str) -> None:
        self.url = url
        self.db = create_engine(url)
        self.settings = settings(fhir_base_url=base_url, mrn_system=OID, api_keys=(KEY,), create_patients=False)
        self.client = FhirClient(base_url, timeout=10)
        self.sync = SyncEngine(UnitOfWork(self.db), self.client, self.settings, utcnow)
        self.ehr = Ehr(base_url)
        self.a, self.b = f"careplan-{self.ehr.a['id']}", f"careplan-{self.ehr.b['id']}"
        self.app = create_app(self.settings, self.db).test_client()

    def plan(self, plan_id: str):
        with UnitOfWork(self.db) as uow:
            return uow.plans.get(plan_id)

    def links(self, plan_id: str) -> set[str]:
        with UnitOfWork(self.db) as uow:
            return {f"{link.resource_type}/{link.fhir_id}" for link in uow.links.for_plan(plan_id)}

    def queued_pushes(self) -> list[str]:
        with UnitOfWork(self.db) as uow:
            return [row.plan_id for row in uow.outbox.list(status="pending") if row.kind == "push_plan"]

    def drain(self) -> None:
        """Push what the team's events queued (as the worker would)."""
        for plan_id in sorted(set(self.queued_pushes())):
            self.sync.push(plan_id)

    def team(self, event_type: str, **data) -> int:
        event = {"type": event_type, "timestamp": utcnow().isoformat(), "data": data}
        raw = json.dumps(event).encode()
        answer = self.app.post("/webhooks/team", data=raw, headers=signed(raw))
        assert answer.status_code == 202, answer.get_json()
        return answer.status_code

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
        env.update(
            DATABASE_URL=self.url,
            FHIR_BASE_URL=self.settings.fhir_base_url or "",
            PLANBRIDGE_MRN_SYSTEM=OID,
            PLANBRIDGE_CREATE_PATIENTS="false",
            PLANBRIDGE_IDENTIFIER_BASE=self.settings.identifier_base,
        )
        return run_planbridge(args, env=env, timeout=60, check=check)


@pytest.fixture
def world(tmp_path, fhir_profile_url):
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    return World(url, fhir_profile_url)


def test_adopt_then_push_creates_no_copies_and_writes_only_the_changed_goal(world):
    """Duplicates: a push of an adopted plan whose goal the team changed writes that Goal by id with
    If-Match, keeps its outcomeReference on the EHR's Observations, and creates nothing on the server."""
    pulled = world.sync.pull_patient(world.ehr.mrn)
    assert pulled.outcomes == {world.a: "new", world.b: "new"}
    before, careplan, steps = world.ehr.counts(), world.ehr.read(world.ehr.a), world.ehr.read(world.ehr.steps[0])
    assert world.sync.push(world.a).requests == 0 and world.sync.push(world.b).requests == 0  # unchanged: nothing

    walk = f"goal-{world.ehr.walk['id']}"
    assert world.team("goal.status_changed", plan_id=world.a, goal_id=walk, lifecycle_status="on-hold") == 202
    world.drain()

    assert world.ehr.counts() == before  # not one resource of the plan created
    # Besides, the push recorded itself: exactly one Provenance, naming the one Goal it wrote.
    goal_ref = f"Goal/{world.ehr.walk['id']}"
    provenances = world.ehr.fhir.search("Provenance", {"target": goal_ref})
    assert [[t["reference"] for t in p["target"]] for p in provenances] == [[goal_ref]]
    goal = world.ehr.read(world.ehr.walk)
    assert goal["lifecycleStatus"] == "on-hold"
    assert [r["reference"] for r in goal["outcomeReference"]] == [f"Observation/{o['id']}" for o in world.ehr.steps]
    # Only the changed Goal was written: the CarePlan and the Observations are as the EHR left them.
    assert world.ehr.read(world.ehr.a)["meta"]["versionId"] == careplan["meta"]["versionId"]
    assert world.ehr.read(world.ehr.steps[0]) == steps
    assert world.sync.status(world.a).status == "in_sync"
    assert world.sync.push(world.a).requests == 0
    assert len(world.ehr.fhir.search("Provenance", {"target": goal_ref})) == 1  # a push of nothing: none


def test_an_adopted_plan_is_pulled_by_id_before_planbridge_ever_wrote_to_it(world):
    """`sync pull --plan <adopted>` reads the CarePlan by id (not "not-on-server") and brings in an EHR edit."""
    world.sync.pull_patient(world.ehr.mrn)
    out = json.loads(world.cli("sync", "pull", "--plan", world.a).stdout)
    assert out["outcomes"] == {world.a: "unchanged"}
    world.ehr.edit(world.ehr.a, title="Cardiac rehabilitation, phase 2")
    out = json.loads(world.cli("sync", "pull", "--plan", world.a).stdout)
    assert out["outcomes"] == {world.a: "updated"}
    assert world.plan(world.a).title == "Cardiac rehabilitation, phase 2"


def test_an_incremental_pull_and_a_notification_see_ehr_edits_to_adopted_plans(world):
    """Incremental pulls find an EHR edit to an adopted plan's Observation; a notified Goal maps to its plan."""
    from service.sync.notifications import receive_resource

    world.sync.pull_patient(world.ehr.mrn)
    world.sync.pull_changed()  # moves the cursor past the EHR's own writes
    assert world.sync.pull_changed().outcomes == {}
    world.ehr.edit(world.ehr.weight[0], valueQuantity={"value": 78, "unit": "/d"})
    pulled = world.sync.pull_changed()
    assert pulled.outcomes == {world.b: "updated"}
    (check_in,) = world.plan(world.b).goals[0].check_ins
    assert check_in.quantity is not None and float(check_in.quantity.value) == 78

    edited = world.ehr.edit(world.ehr.walk, description={"text": "Walk 6000 steps a day"})
    received = receive_resource(UnitOfWork(world.db), edited, world.settings.identifier_base, utcnow())
    assert received.queued == [world.a]


def test_adoption_invents_no_created_and_the_patient_is_on_the_team(world):
    """No `created` is invented (the import time never reaches the EHR's CarePlan); the patient is on the
    team, so an event the patient authors is accepted; what it changes is written, nothing else."""
    out = json.loads(
        world.cli("plans", "adopt", "--url", f"{world.settings.fhir_base_url}/CarePlan/{world.ehr.b['id']}").stdout
    )
    assert out["adopted"] == [{"plan_id": world.b, "outcome": "new"}]
    assert world.plan(world.b).created_at is None
    assert world.plan(world.a) is None  # only the CarePlan named
    plan = world.plan(world.b)
    patient = plan.patient_member()
    assert patient is not None and patient.in_team
    before = world.ehr.counts()

    diet = f"goal-{world.ehr.diet['id']}"
    status = world.team(
        "checkin.recorded",
        plan_id=world.b,
        goal_id=diet,
        checkin_id="w2",
        at="2026-03-01T09:00:00Z",
        measure={"display": "Body weight"},
        value=79,
        unit="kg",
        recorded_by=patient.id,
    )
    assert status == 202 and world.plan(world.b).goal(diet).check_ins[-1].id == "w2"
    world.drain()
    assert world.plan(world.b).created_at is None
    assert "created" not in world.ehr.read(world.ehr.b)
    after = world.ehr.counts()
    assert after["Observation"] == before["Observation"] + 1  # the new check-in, and nothing else
    assert {k: v for k, v in after.items() if k != "Observation"} == {
        k: v for k, v in before.items() if k != "Observation"
    }
    assert world.sync.status(world.b).status == "in_sync"


def test_pulling_a_patient_twice_answers_unchanged_and_queues_nothing_and_links_each_plan_to_its_own(world):
    """`pull --patient` of unchanged adopted plans: "unchanged", no push queued. Links are per plan: one
    plan's links never name the other CarePlan's Goals or Observations. The API adopts the same way."""
    world.sync.pull_patient(world.ehr.mrn)
    again = world.sync.pull_patient(world.ehr.mrn)
    assert again.outcomes == {world.a: "unchanged", world.b: "unchanged"}
    assert world.queued_pushes() == []

    ehr = world.ehr
    a_parts = {f"Goal/{ehr.walk['id']}", f"Goal/{ehr.sleep['id']}", f"CareTeam/{ehr.team['id']}"}
    a_parts |= {f"Observation/{o['id']}" for o in ehr.steps}
    b_parts = {f"Goal/{ehr.diet['id']}"} | {f"Observation/{o['id']}" for o in ehr.weight}
    patient = f"Patient/{ehr.patient['id']}"
    assert world.links(world.a) == a_parts | {f"CarePlan/{ehr.a['id']}", patient}
    assert world.links(world.b) == b_parts | {f"CarePlan/{ehr.b['id']}", patient}

    answer = world.app.post("/plans/adopt", json={"patient_mrn": ehr.mrn}, headers={"X-API-Key": KEY})
    assert answer.status_code == 200
    assert answer.get_json()["adopted"] == [{"plan_id": p, "outcome": "unchanged"} for p in sorted([world.a, world.b])]
    answer = world.app.post("/plans/adopt", json={"careplan": f"CarePlan/{ehr.a['id']}"}, headers={"X-API-Key": KEY})
    assert answer.get_json()["adopted"] == [{"plan_id": world.a, "outcome": "unchanged"}]
    assert world.queued_pushes() == []


def test_an_ehr_edit_then_a_team_change_merges_or_records_a_real_conflict(world):
    """After an EHR edit to an adopted plan, a team change to another field is merged and pushed; one to the
    same field is a recorded conflict. Never "conflicted" with no conflict (a 409 loop)."""
    world.sync.pull_patient(world.ehr.mrn)
    walk, sleep = f"goal-{world.ehr.walk['id']}", f"goal-{world.ehr.sleep['id']}"
    world.ehr.edit(world.ehr.walk, description={"text": "Walk 6000 steps a day"})
    world.ehr.edit(world.ehr.sleep, lifecycleStatus="on-hold")

    assert world.team("goal.status_changed", plan_id=world.a, goal_id=walk, lifecycle_status="on-hold") == 202
    assert world.team("goal.status_changed", plan_id=world.a, goal_id=sleep, lifecycle_status="completed") == 202
    world.drain()

    status = world.sync.status(world.a)
    assert status.status == "conflicted"
    assert [c["path"] for c in status.conflicts] == [f"goals[id={sleep}].lifecycle_status"]
    walk_now = world.ehr.read(world.ehr.walk)
    assert (walk_now["lifecycleStatus"], walk_now["description"]["text"]) == ("on-hold", "Walk 6000 steps a day")
    assert world.ehr.read(world.ehr.sleep)["lifecycleStatus"] == "on-hold"  # held until someone resolves it
    assert world.plan(world.a).goal(walk).description.text == "Walk 6000 steps a day"

    world.sync.resolve(status.conflicts[0]["id"], "theirs")
    world.drain()
    assert world.sync.status(world.a).status == "in_sync"
    assert world.sync.push(world.a).requests == 0


@pytest.mark.parametrize("fhir_profile", ["hapi"], indirect=True)
def test_adopted_plans_are_found_by_incremental_pulls_on_postgres_too(database, fhir_profile_url):  # noqa: F811
    """The adopted-plan lookup (one SQL query over fhir_links) on both databases."""
    _, url = database
    world = World(url, fhir_profile_url)
    world.sync.pull_patient(world.ehr.mrn)
    world.sync.pull_changed()
    world.ehr.edit(world.ehr.b, title="Weight, revised")
    assert world.sync.pull_changed().outcomes == {world.b: "updated"}


@pytest.mark.parametrize("fhir_profile", ["hapi"], indirect=True)
def test_adoption_refuses_what_it_cannot_adopt_with_a_problem(world):
    """Bad input is a 400 problem (CLI: a clear error); nothing found is a 404 problem."""
    headers = {"X-API-Key": KEY}
    for body in (
        {},
        {"patient_mrn": "1", "careplan": "CarePlan/1"},
        {"careplan": "Goal/1"},
        {"url": "https://elsewhere.example/fhir/CarePlan/1"},
    ):
        answer = world.app.post("/plans/adopt", json=body, headers=headers)
        assert answer.status_code == 400 and answer.content_type == "application/problem+json", body
    missing = world.app.post("/plans/adopt", json={"patient_mrn": "no-such-mrn"}, headers=headers)
    assert missing.status_code == 404 and missing.get_json()["type"].endswith("not-found")
    missing = world.app.post("/plans/adopt", json={"careplan": "CarePlan/does-not-exist"}, headers=headers)
    assert missing.status_code == 404
    assert world.app.post("/plans/adopt", json={"patient_mrn": world.ehr.mrn}).status_code == 401
    off = world.cli("plans", "adopt", "--url", "https://elsewhere.example/fhir/CarePlan/1", check=False)
    assert off.returncode == 1 and "not a CarePlan on the configured FHIR server" in off.stderr


def test_plans_import_stores_a_plan_json_or_a_bundle_and_queues_its_push(tmp_path):
    """`plans import FILE`: plan JSON or a FHIR Bundle (told apart by content), checked as `convert` checks
    it; an existing id is refused unless --replace; the push is queued; the plan id is printed."""
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    from click.testing import CliRunner

    from service.cli import main

    unset = [k for k in os.environ if k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))]
    env = {**dict.fromkeys(unset), "DATABASE_URL": url}

    def run(*args: str, stdin: str | None = None):
        return CliRunner().invoke(main, list(args), input=stdin, env=env)

    plan_file = Path(__file__).parents[2] / "fixtures" / "plans" / "knee-rehabilitation.json"
    plan_id = json.loads(plan_file.read_text())["id"]
    first = run("plans", "import", str(plan_file))
    assert (first.exit_code, first.stdout.strip()) == (0, plan_id)
    again = run("plans", "import", str(plan_file))
    assert again.exit_code == 1 and "already exists" in again.stderr and "--replace" in again.stderr
    replaced = run("plans", "import", "--replace", str(plan_file))
    assert (replaced.exit_code, replaced.stdout.strip()) == (0, plan_id)

    bundle = run("convert", "to-fhir", str(plan_file)).stdout
    # The Patient replaced by another entry: every reference to it (subject, team member, proposer, agreement,
    # performer) names the new entry, or the transaction would hold placeholders no entry has (HAPI-0541).
    patient_url = next(e["fullUrl"] for e in json.loads(bundle)["entry"] if e["resource"]["resourceType"] == "Patient")
    document = json.loads(bundle.replace(json.dumps(patient_url), json.dumps("urn:uuid:p")))
    document["entry"] = [e for e in document["entry"] if e["resource"]["resourceType"] != "Patient"] + [
        {
            "fullUrl": "urn:uuid:p",
            "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "9"}]},
            "request": {"method": "POST", "url": "Patient"},  # a transaction's entry has its request (bdl-3)
        }
    ]
    for entry in document["entry"]:
        if "subject" in entry["resource"]:
            entry["resource"]["subject"] = {"reference": "urn:uuid:p"}
    from_bundle = run("plans", "import", "--replace", "-", stdin=json.dumps(document))
    assert (from_bundle.exit_code, from_bundle.stdout.strip()) == (0, plan_id), from_bundle.stderr

    broken = json.loads(plan_file.read_text())
    broken["goals"][0]["lifecycle_status"] = "not-a-status"
    refused = run("plans", "import", "-", stdin=json.dumps({**broken, "id": "plan-broken"}))
    converted = run("convert", "to-fhir", "-", stdin=json.dumps({**broken, "id": "plan-broken"}))
    assert refused.exit_code == converted.exit_code == 1
    assert refused.stderr.replace("plans import", "").splitlines()[1:] == converted.stderr.splitlines()[1:]
    with UnitOfWork(create_engine(url)) as uow:
        assert uow.plans.ids() == [plan_id]
        assert [row.plan_id for row in uow.outbox.list(status="pending")] == [plan_id] * 3
