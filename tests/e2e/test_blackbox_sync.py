"""Adoption and sync checked from the documented interfaces only, as a hospital's integration tester would:
the EHR's own resources (with content planbridge does not model) are POSTed to the real local FHIR server
(both profiles), planbridge adopts them (`POST /plans/adopt`), the team changes the plan (signed
`POST /webhooks/team`) and pushes. Every EHR element planbridge does not model must still be on the server,
nothing may be duplicated, and no resource may be written that the plan does not hold.

Each `test_..._regression` test is a bug this check found (named after the behaviour it restores).
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest

from service.api.app import create_app
from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.adopt import Target
from service.sync.engine import SyncEngine
from tests.db_fixtures import database  # noqa: F401
from tests.support import settings, signed

OID = "urn:oid:2.16.840.1.113883.19.5.99"
KEY = "blackbox-key-0123456789abcdef"
XHTML = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Walk <b>more</b></p></div>'


class Hospital:
    """planbridge on its own database, and an EHR writing its own resources to the same FHIR server."""

    def __init__(self, url: str, base_url: str) -> None:
        self.db = create_engine(url)
        self.settings = settings(fhir_base_url=base_url, mrn_system=OID, api_keys=(KEY,), create_patients=False)
        self.fhir = FhirClient(base_url, timeout=30)
        self.sync = SyncEngine(UnitOfWork(self.db), self.fhir, self.settings, utcnow)
        self.app = create_app(self.settings, self.db).test_client()
        self.mrn = f"bb-{uuid.uuid4().hex[:10]}"
        self.patient = self.create({"resourceType": "Patient", "identifier": [{"system": OID, "value": self.mrn}]})
        self.subject = {"reference": f"Patient/{self.patient['id']}"}

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        return self.fhir.request("POST", resource["resourceType"], json=resource).json()

    def read(self, resource: dict[str, Any]) -> dict[str, Any]:
        return self.fhir.read(resource["resourceType"], resource["id"])

    def count(self, resource_type: str) -> int:
        return self.fhir.request("GET", resource_type, params={"_summary": "count"}).json()["total"]

    def adopt(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.app.post("/plans/adopt", json=body, headers={"X-API-Key": KEY})
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    def team(self, event_type: str, **data: Any) -> None:
        raw = json.dumps({"type": event_type, "timestamp": utcnow().isoformat(), "data": data}).encode()
        answer = self.app.post("/webhooks/team", data=raw, headers=signed(raw))
        assert answer.status_code == 202, answer.get_json()

    def push(self, plan_id: str):
        return self.sync.push(plan_id)

    def plan(self, plan_id: str):
        with UnitOfWork(self.db) as uow:
            return uow.plans.get(plan_id)

    def history(self, plan_id: str) -> list[str]:
        answer = self.app.get(f"/plans/{plan_id}/history", headers={"X-API-Key": KEY})
        assert answer.status_code == 200
        return [entry["event_type"] for entry in answer.get_json()]


@pytest.fixture
def hospital(tmp_path, fhir_profile_url) -> Hospital:
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    return Hospital(url, fhir_profile_url)


def test_a_second_careteam_of_an_adopted_careplan_is_never_written_with_the_plans_team_regression(hospital):
    """Bug: an EHR CarePlan naming two CareTeams was linked to the *second* one under the key of the plan's
    team (`careteam`), so the first team change (member.joined) overwrote the EHR's other CareTeam with the
    plan's team (its name, participants and identifier) and re-pointed `CarePlan.careTeam[0]` at it.
    The team is `careTeam[0]` (docs/mapping.md); the others are kept as they came and never written."""
    h = hospital
    doctor = h.create({"resourceType": "Practitioner", "name": [{"text": "Dr Ames"}]})
    nurse = h.create({"resourceType": "Practitioner", "name": [{"text": "Nurse Bo"}]})
    cardiac = h.create(
        {
            "resourceType": "CareTeam",
            "name": "Cardiac team",
            "subject": h.subject,
            "participant": [{"member": {"reference": f"Practitioner/{doctor['id']}"}}],
        }
    )
    wound = h.create(
        {
            "resourceType": "CareTeam",
            "name": "Wound care team",
            "subject": h.subject,
            "participant": [{"member": {"reference": f"Practitioner/{nurse['id']}"}}],
        }
    )
    careplan = h.create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": h.subject,
            "careTeam": [{"reference": f"CareTeam/{cardiac['id']}"}, {"reference": f"CareTeam/{wound['id']}"}],
        }
    )
    plan_id = f"careplan-{careplan['id']}"
    h.adopt({"careplan": f"CarePlan/{careplan['id']}"})
    wound_before = h.read(wound)
    careteams = h.count("CareTeam")

    identifier = {"system": "http://hl7.org/fhir/sid/us-npi", "value": uuid.uuid4().hex[:10]}
    h.team(
        "member.joined",
        plan_id=plan_id,
        member_id="diet",
        kind="practitioner",
        role="dietitian",
        name="Owen",
        identifier=identifier,
    )
    assert h.push(plan_id).status == "in_sync"

    assert h.read(wound) == wound_before  # the EHR's other CareTeam: not written at all
    after = h.read(careplan)
    assert [r["reference"] for r in after["careTeam"]] == [f"CareTeam/{cardiac['id']}", f"CareTeam/{wound['id']}"]
    cardiac_now = h.read(cardiac)
    assert cardiac_now["name"] == "Cardiac team"
    members = [p["member"]["reference"] for p in cardiac_now["participant"]]
    assert members[0] == f"Practitioner/{doctor['id']}" and len(members) == 2  # the doctor, and the dietitian
    assert h.count("CareTeam") == careteams
    assert h.push(plan_id).requests == 0


def test_a_goal_two_adopted_careplans_share_takes_each_plans_change_without_a_version_loop_regression(hospital):
    """Bug: once plan A's push wrote planbridge's identifier (`careplan-A/goal-x`) into a Goal the EHR's
    CarePlan B also names, plan B's pulls no longer recorded the Goal's version (it carried another plan's
    identifier), so each push of B met a stale If-Match, re-read, and ended `pending` with the team's
    change never on the server (a broken 202, two requests a try, for ever). Now the Goal stays B's part,
    B's change lands, and each plan's identifier is kept on the Goal."""
    h = hospital
    goal = h.create(
        {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "Shared"}, "subject": h.subject}
    )
    plans = [
        h.create(
            {
                "resourceType": "CarePlan",
                "status": "active",
                "intent": "plan",
                "subject": h.subject,
                "goal": [{"reference": f"Goal/{goal['id']}"}],
            }
        )
        for _ in range(2)
    ]
    a, b = (f"careplan-{p['id']}" for p in plans)
    goal_id = f"goal-{goal['id']}"
    h.adopt({"patient_mrn": h.mrn})

    h.team("goal.status_changed", plan_id=a, goal_id=goal_id, lifecycle_status="on-hold")
    assert h.push(a).status == "in_sync"
    h.adopt({"patient_mrn": h.mrn})  # B reads A's write
    assert h.plan(b).goal(goal_id).lifecycle_status == "on-hold"

    h.team("goal.status_changed", plan_id=b, goal_id=goal_id, lifecycle_status="completed")
    pushed = h.push(b)
    assert (pushed.status, pushed.requests) == ("in_sync", 1)
    on_server = h.read(goal)
    assert on_server["lifecycleStatus"] == "completed"
    values = sorted(i["value"] for i in on_server["identifier"])
    assert values == sorted([f"{a}/{goal_id}", f"{b}/{goal_id}"])
    assert h.count("Goal") >= 1 and len(h.fhir.search("Goal", {"subject": f"Patient/{h.patient['id']}"})) == 1

    assert h.sync.pull_plans([a, b]).outcomes == {a: "updated", b: "unchanged"}
    assert h.plan(a).goal(goal_id).lifecycle_status == "completed"
    assert h.push(a).requests == 0 and h.push(b).requests == 0
    assert h.sync.status(a).status == h.sync.status(b).status == "in_sync"


RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
EHR_TAG = {"system": "urn:example:ehr-tags", "code": "behavioural-health"}


def test_an_ehr_resources_security_labels_and_tags_stay_on_it_when_planbridge_writes_it_regression(hospital):
    """Bug: a push of an adopted plan's changed Goal, CareTeam or CarePlan sent no `meta`, and a server that
    takes `meta` from the update (Medplum, the local server) dropped the EHR's security labels and tags: a
    "restricted" Goal was no longer restricted after a team change. The labels, tags and profiles are kept."""
    h = hospital
    meta = {"security": [RESTRICTED], "tag": [EHR_TAG]}
    doctor = h.create({"resourceType": "Practitioner", "name": [{"text": "Dr Ames"}]})
    goal = h.create(
        {
            "resourceType": "Goal",
            "meta": meta,
            "lifecycleStatus": "active",
            "description": {"text": "Sleep through the night"},
            "subject": h.subject,
        }
    )
    team = h.create(
        {
            "resourceType": "CareTeam",
            "meta": meta,
            "subject": h.subject,
            "participant": [{"member": {"reference": f"Practitioner/{doctor['id']}"}}],
        }
    )
    careplan = h.create(
        {
            "resourceType": "CarePlan",
            "meta": meta,
            "status": "active",
            "intent": "plan",
            "subject": h.subject,
            "careTeam": [{"reference": f"CareTeam/{team['id']}"}],
            "goal": [{"reference": f"Goal/{goal['id']}"}],
        }
    )
    plan_id = f"careplan-{careplan['id']}"
    h.adopt({"careplan": careplan["id"]})
    h.team("goal.status_changed", plan_id=plan_id, goal_id=f"goal-{goal['id']}", lifecycle_status="on-hold")
    h.team("plan.updated", plan_id=plan_id, title="Sleep")
    identifier = {"system": "http://hl7.org/fhir/sid/us-npi", "value": uuid.uuid4().hex[:10]}
    h.team("member.joined", plan_id=plan_id, member_id="nurse", kind="practitioner", name="Bo", identifier=identifier)
    assert h.push(plan_id).status == "in_sync"

    for before in (goal, team, careplan):
        now = h.read(before)
        assert now["meta"]["versionId"] != before["meta"]["versionId"]  # planbridge wrote it
        assert now["meta"].get("security") == [RESTRICTED], now["meta"]
        assert now["meta"].get("tag") == [EHR_TAG], now["meta"]
    assert h.read(goal)["lifecycleStatus"] == "on-hold"
    assert h.adopt({"careplan": careplan["id"]})["adopted"] == [{"plan_id": plan_id, "outcome": "unchanged"}]
    assert h.push(plan_id).requests == 0


def test_adopting_again_after_a_push_answers_unchanged_and_records_no_ehr_change_regression(hospital):
    """Bug: after adopt -> team change -> push, adopting again (documented as a pull, `unchanged` when nothing
    moved) answered `updated`, bumped the plan's version and recorded an `ehr.plan_changed` naming the
    internal key `fhir_extra._planbridge_source`: the push had added planbridge's identifier to the Goal,
    and the read of it lost the mark of the EHR resource it came from."""
    h = hospital
    observation = h.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "steps"},
            "subject": h.subject,
            "valueInteger": 3000,
        }
    )
    goal = h.create(
        {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": "Walk"},
            "subject": h.subject,
            "outcomeReference": [{"reference": f"Observation/{observation['id']}"}],
        }
    )
    careplan = h.create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": h.subject,
            "goal": [{"reference": f"Goal/{goal['id']}"}],
        }
    )
    plan_id = f"careplan-{careplan['id']}"
    h.adopt({"careplan": careplan["id"]})
    h.team("goal.status_changed", plan_id=plan_id, goal_id=f"goal-{goal['id']}", lifecycle_status="on-hold")
    h.team("plan.updated", plan_id=plan_id, title="Walking")
    assert h.push(plan_id).status == "in_sync"
    version = h.plan(plan_id).version
    history = h.history(plan_id)

    again = h.adopt({"careplan": careplan["id"]})
    assert again["adopted"] == [{"plan_id": plan_id, "outcome": "unchanged"}]
    assert h.plan(plan_id).version == version and h.history(plan_id) == history
    assert h.push(plan_id).requests == 0
    assert h.sync.pull_plans([plan_id]).outcomes == {plan_id: "unchanged"}


@pytest.mark.parametrize("fhir_profile", ["medplum", "hapi"], indirect=True)
def test_the_same_careplan_adopted_by_several_processes_at_once_is_stored_once_regression(database, fhir_profile_url):  # noqa: F811
    """Bug (PostgreSQL): adopting one CarePlan from several processes at once (two integrators, a retry after
    a timeout, `sync pull --patient` beside `POST /plans/adopt`) failed in all but one with an IntegrityError
    on `sync_state` (a 500 through the API). The losers now merge into the plan the winner stored."""
    _, url = database
    h = Hospital(url, fhir_profile_url)
    goal = h.create(
        {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"}, "subject": h.subject}
    )
    careplan = h.create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": h.subject,
            "goal": [{"reference": f"Goal/{goal['id']}"}],
        }
    )
    plan_id = f"careplan-{careplan['id']}"
    barrier, answers = threading.Barrier(4), []

    def adopt() -> None:
        engine = SyncEngine(
            UnitOfWork(h.db), FhirClient(h.settings.fhir_base_url or "", timeout=30), h.settings, utcnow
        )
        barrier.wait()
        try:
            answers.append(engine.adopt(Target(careplan_id=careplan["id"])).outcomes[plan_id])
        except Exception as exc:
            answers.append(repr(exc))

    threads = [threading.Thread(target=adopt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == ["new", "unchanged", "unchanged", "unchanged"]
    assert h.history(plan_id) == ["ehr.plan_changed"]
    assert h.sync.status(plan_id).status == "in_sync"


def test_an_ehr_careplan_full_of_unmodelled_content_keeps_it_all_through_adopt_team_changes_and_push(hospital):
    """Verified behaviour: contained resources, modifierExtensions, narrative XHTML, Goal targets of every
    detail type, outcomeCode, an activity naming a ServiceRequest, an activity detail with a product, a second
    performer that is an Organization, CareTeam participants that are Organizations, a second CareTeam: after
    adopt -> team changes to the plan, its team and a goal -> push, all of it is still on the server, no
    resource is created but the new check-in and the dietitian, and the untouched resources are not written.
    (What docs/mapping.md lists as not kept, `meta` and extensions inside datatypes, is left out here.)"""
    h = hospital
    doctor = h.create({"resourceType": "Practitioner", "name": [{"text": "Dr X"}]})
    clinic = h.create({"resourceType": "Organization", "name": "Clinic"})
    mother = h.create({"resourceType": "RelatedPerson", "patient": h.subject, "name": [{"text": "Mum"}]})
    order = h.create({"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": h.subject})
    team = h.create(
        {
            "resourceType": "CareTeam",
            "status": "active",
            "name": "Cardiac team",
            "subject": h.subject,
            "participant": [
                {
                    "member": {"reference": f"Practitioner/{doctor['id']}"},
                    "role": [{"text": "lead"}, {"text": "second role"}],
                    "period": {"start": "2026-01-01"},
                    "onBehalfOf": {"reference": f"Organization/{clinic['id']}"},
                },
                {"member": {"reference": f"Organization/{clinic['id']}"}},
                {"member": {"reference": f"RelatedPerson/{mother['id']}"}},
            ],
        }
    )
    steps = h.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "55423-8"}]},
            "subject": h.subject,
            "valueQuantity": {"value": 3000, "unit": "/d"},
            "category": [{"text": "activity"}],
            "interpretation": [{"text": "low"}],
        }
    )
    walk = h.create(
        {
            "resourceType": "Goal",
            "text": {"status": "generated", "div": XHTML},
            "identifier": [{"system": "urn:ehr:goal", "value": "G1"}],
            "extension": [{"url": "urn:ehr:ext", "valueString": "kept"}],
            "modifierExtension": [{"url": "urn:ehr:mod", "valueBoolean": False}],
            "lifecycleStatus": "active",
            "description": {"text": "Walk more"},
            "subject": h.subject,
            "target": [
                {
                    "measure": {"text": "steps"},
                    "detailRange": {"low": {"value": 4000}, "high": {"value": 6000}},
                    "dueDate": "2026-06-01",
                },
                {"measure": {"text": "ratio"}, "detailRatio": {"numerator": {"value": 1}, "denominator": {"value": 2}}},
                {"measure": {"text": "feel"}, "detailCodeableConcept": {"text": "better"}},
                {"measure": {"text": "words"}, "detailString": "a lot"},
                {"measure": {"text": "yes"}, "detailBoolean": True},
                {
                    "measure": {"text": "n"},
                    "detailInteger": 3,
                    "dueDuration": {"value": 3, "unit": "mo", "system": "http://unitsofmeasure.org", "code": "mo"},
                },
            ],
            "outcomeCode": [{"text": "improved"}],
            "outcomeReference": [{"reference": f"Observation/{steps['id']}"}],
            "expressedBy": {"reference": f"Practitioner/{doctor['id']}"},
            "note": [{"text": "first note", "authorString": "nurse", "time": "2026-01-02T00:00:00Z"}],
        }
    )
    sleep = h.create(
        {"resourceType": "Goal", "lifecycleStatus": "proposed", "description": {"text": "Sleep"}, "subject": h.subject}
    )
    other_team = h.create({"resourceType": "CareTeam", "status": "active", "subject": h.subject})
    careplan = h.create(
        {
            "resourceType": "CarePlan",
            "text": {"status": "additional", "div": XHTML},
            "contained": [{"resourceType": "Condition", "id": "chf", "subject": h.subject, "code": {"text": "CHF"}}],
            "identifier": [{"system": "urn:ehr:careplan", "value": "CP1"}],
            "extension": [{"url": "urn:ehr:cp", "valueString": "kept"}],
            "modifierExtension": [{"url": "urn:ehr:cpmod", "valueBoolean": False}],
            "status": "active",
            "intent": "plan",
            "title": "Rich",
            "subject": h.subject,
            "addresses": [{"reference": "#chf"}],
            "careTeam": [{"reference": f"CareTeam/{team['id']}"}, {"reference": f"CareTeam/{other_team['id']}"}],
            "goal": [{"reference": f"Goal/{walk['id']}"}, {"reference": f"Goal/{sleep['id']}"}],
            "activity": [
                {"reference": {"reference": f"ServiceRequest/{order['id']}"}},
                {
                    "outcomeCodeableConcept": [{"text": "ok"}],
                    "detail": {
                        "kind": "MedicationRequest",
                        "status": "in-progress",
                        "productCodeableConcept": {"text": "aspirin"},
                        "dailyAmount": {"value": 1},
                        "description": "take aspirin",
                        "goal": [{"reference": f"Goal/{walk['id']}"}],
                        "performer": [
                            {"reference": f"Practitioner/{doctor['id']}"},
                            {"reference": f"Organization/{clinic['id']}"},
                        ],
                    },
                },
            ],
        }
    )
    plan_id, walk_id = f"careplan-{careplan['id']}", f"goal-{walk['id']}"
    answer = h.adopt({"careplan": f"CarePlan/{careplan['id']}"})
    assert answer["adopted"] == [{"plan_id": plan_id, "outcome": "new"}]
    assert h.push(plan_id).requests == 0
    before = {
        name: h.read(r)
        for name, r in {"steps": steps, "sleep": sleep, "other_team": other_team, "order": order}.items()
    }
    counts = {t: h.count(t) for t in ("CarePlan", "CareTeam", "Goal", "Observation", "Practitioner", "Patient")}

    h.team("goal.status_changed", plan_id=plan_id, goal_id=walk_id, lifecycle_status="on-hold")
    h.team("plan.updated", plan_id=plan_id, title="Rich, revised")
    identifier = {"system": "http://hl7.org/fhir/sid/us-npi", "value": uuid.uuid4().hex[:10]}
    h.team(
        "member.joined",
        plan_id=plan_id,
        member_id="diet",
        kind="practitioner",
        role="dietitian",
        name="Owen",
        identifier=identifier,
    )
    h.team(
        "checkin.recorded",
        plan_id=plan_id,
        goal_id=walk_id,
        checkin_id="c1",
        at="2026-03-01T09:00:00Z",
        value=4100,
        unit="/d",
        recorded_by="patient",
    )
    h.team(
        "note.added", plan_id=plan_id, goal_id=walk_id, text="team note", author="patient", time="2026-03-01T09:00:00Z"
    )
    assert h.push(plan_id).status == "in_sync"

    assert {
        name: h.read(r)
        for name, r in {"steps": steps, "sleep": sleep, "other_team": other_team, "order": order}.items()
    } == before
    added = {t: h.count(t) - counts[t] for t in counts}
    assert added == {"CarePlan": 0, "CareTeam": 0, "Goal": 0, "Observation": 1, "Practitioner": 1, "Patient": 0}

    plan_now, walk_now, team_now = h.read(careplan), h.read(walk), h.read(team)
    for key in ("text", "contained", "extension", "modifierExtension", "addresses"):
        assert plan_now[key] == careplan[key], key
    assert plan_now["title"] == "Rich, revised"
    assert {"system": "urn:ehr:careplan", "value": "CP1"} in plan_now["identifier"]
    assert [r["reference"] for r in plan_now["careTeam"]] == [r["reference"] for r in careplan["careTeam"]]
    assert sorted(json.dumps(a, sort_keys=True) for a in plan_now["activity"]) == sorted(
        json.dumps(a, sort_keys=True) for a in careplan["activity"]
    )
    for key in ("text", "extension", "modifierExtension", "target", "outcomeCode", "expressedBy", "description"):
        assert walk_now[key] == walk[key], key
    assert walk_now["lifecycleStatus"] == "on-hold"
    assert {"system": "urn:ehr:goal", "value": "G1"} in walk_now["identifier"]
    assert walk_now["note"][0] == walk["note"][0] and walk_now["note"][1]["text"] == "team note"
    assert next(r["reference"] for r in walk_now["outcomeReference"]) == f"Observation/{steps['id']}"
    assert team_now["name"] == "Cardiac team" and team_now["status"] == "active"
    assert team_now["participant"][:1] == team["participant"][:1]
    assert {"member": {"reference": f"Organization/{clinic['id']}"}} in team_now["participant"]
    assert {"member": {"reference": f"RelatedPerson/{mother['id']}"}} in team_now["participant"]
    assert h.push(plan_id).requests == 0
    again = h.adopt({"careplan": careplan["id"]})
    assert again["adopted"] == [{"plan_id": plan_id, "outcome": "unchanged"}]


def test_a_step_after_an_activity_naming_a_service_request_keeps_its_id_after_a_push_regression(hospital):
    """Bug: a step read from an activity without an `id` was named `activity-{n}` by its position among all
    the CarePlan's activities. A push writes steps before the activities it keeps as they came (a
    ServiceRequest's), so the next read named the same step `activity-1` instead of `activity-2`: the step
    was recorded as removed in the EHR and came back as a new step (a duplicate, and a false
    `ehr.plan_changed`). Synthetic ids now count steps only."""
    h = hospital
    order = h.create({"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": h.subject})
    careplan = h.create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "title": "Rehab",
            "subject": h.subject,
            "activity": [
                {"reference": {"reference": f"ServiceRequest/{order['id']}"}},
                {"detail": {"status": "in-progress", "description": "Walk daily"}},
            ],
        }
    )
    plan_id = f"careplan-{careplan['id']}"
    h.adopt({"careplan": careplan["id"]})
    (step,) = h.plan(plan_id).steps
    h.team("plan.updated", plan_id=plan_id, title="Rehab, phase 2")
    assert h.push(plan_id).status == "in_sync"

    assert h.adopt({"careplan": careplan["id"]})["adopted"] == [{"plan_id": plan_id, "outcome": "unchanged"}]
    steps = h.plan(plan_id).steps
    assert [(s.id, s.description, s.removed_in_ehr) for s in steps] == [(step.id, "Walk daily", None)]
    activities = h.read(careplan)["activity"]
    assert len(activities) == 2 and "id" not in activities[0]  # the synthetic id is not written back


def test_the_patient_stays_first_on_an_adopted_team_once_a_check_in_names_them_regression(hospital):
    """Bug: the patient planbridge puts on an EHR plan's team went first; once a check-in the patient recorded
    was on the server, the next read registered the patient while reading the goals, after the CareTeam's
    members, so re-adopting moved the patient last: outcome `updated`, a new plan version and an
    `ehr.plan_changed` with no path, where nothing had changed."""
    h = hospital
    doctor = h.create({"resourceType": "Practitioner", "name": [{"text": "Dr X"}]})
    team = h.create(
        {
            "resourceType": "CareTeam",
            "subject": h.subject,
            "participant": [{"member": {"reference": f"Practitioner/{doctor['id']}"}}],
        }
    )
    goal = h.create(
        {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "Walk"}, "subject": h.subject}
    )
    careplan = h.create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": h.subject,
            "careTeam": [{"reference": f"CareTeam/{team['id']}"}],
            "goal": [{"reference": f"Goal/{goal['id']}"}],
        }
    )
    plan_id, goal_id = f"careplan-{careplan['id']}", f"goal-{goal['id']}"
    h.adopt({"careplan": careplan["id"]})
    assert [m.id for m in h.plan(plan_id).team] == ["patient", f"practitioner-{doctor['id']}"]
    h.team(
        "checkin.recorded",
        plan_id=plan_id,
        goal_id=goal_id,
        checkin_id="c1",
        measure={"display": "Steps"},
        at="2026-03-01T09:00:00Z",
        value=4100,
        unit="/d",
        recorded_by="patient",
    )
    assert h.push(plan_id).status == "in_sync"
    version, history = h.plan(plan_id).version, h.history(plan_id)

    assert h.adopt({"careplan": careplan["id"]})["adopted"] == [{"plan_id": plan_id, "outcome": "unchanged"}]
    assert [m.id for m in h.plan(plan_id).team] == ["patient", f"practitioner-{doctor['id']}"]
    assert (h.plan(plan_id).version, h.history(plan_id)) == (version, history)


def test_an_adopted_plan_of_120_goals_takes_60_goal_changes_in_transactions_within_medplums_limits(
    tmp_path, fhir_medplum_url
):
    """Verified behaviour: a CarePlan with 120 EHR Goals is adopted whole; 60 changed Goals (over Medplum's
    50 updates a transaction) are written by id in transactions the server takes, nothing is created, and
    the next push and an incremental pull find nothing to do."""
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    h = Hospital(url, fhir_medplum_url)
    goals = [
        h.create(
            {
                "resourceType": "Goal",
                "lifecycleStatus": "active",
                "description": {"text": f"goal {n}"},
                "subject": h.subject,
            }
        )
        for n in range(120)
    ]
    careplan = h.create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": h.subject,
            "goal": [{"reference": f"Goal/{g['id']}"} for g in goals],
        }
    )
    plan_id = f"careplan-{careplan['id']}"
    h.adopt({"careplan": careplan["id"]})
    assert len(h.plan(plan_id).goals) == 120
    count = h.count("Goal")
    for goal in goals[:60]:
        h.team("goal.status_changed", plan_id=plan_id, goal_id=f"goal-{goal['id']}", lifecycle_status="on-hold")
    pushed = h.push(plan_id)
    assert (pushed.status, pushed.resources) == ("in_sync", 60)
    assert h.count("Goal") == count
    assert [h.read(g)["lifecycleStatus"] for g in goals[:60]] == ["on-hold"] * 60
    assert {h.read(g)["meta"]["versionId"] for g in goals[60:]} == {g["meta"]["versionId"] for g in goals[60:]}
    assert h.push(plan_id).requests == 0
    h.sync.pull_changed()
    assert h.sync.pull_changed().outcomes == {}


def test_debug_logs_do_not_carry_the_mrn_a_patient_search_names(fhir_base_url, capfd):
    """Bug: at `PLANBRIDGE_LOG_LEVEL=DEBUG` urllib3 logged each request line with its query string, so the
    Patient lookup of every push and adoption (`Patient?identifier=<system>|<mrn>`) wrote the MRN to the
    log (fixed in service/logs.py: urllib3 stays at INFO or above). README: logs carry ids and codes, never
    names, MRNs or free text, at every level."""
    import logging

    from service.logs import configure

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("urllib3").level)
    mrn = f"MRN-{uuid.uuid4().hex[:12]}"
    try:
        configure(level="DEBUG", fmt="json")
        FhirClient(fhir_base_url, timeout=10).find_one("Patient", {"identifier": f"{OID}|{mrn}"})
        for handler in root.handlers:
            handler.flush()
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("urllib3").setLevel(saved[2])
    logged = capfd.readouterr().err
    assert "Patient" in logged  # the request was logged at DEBUG...
    assert mrn not in logged  # ...without the MRN
