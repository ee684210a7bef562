"""Two-way sync against the real local FHIR server, on SQLite and PostgreSQL."""

import json
import uuid

import pytest

from mappings import codes
from service.api.container import utcnow
from service.domain import codec
from service.domain.model import Plan
from service.domain.types import Note
from service.fhir.capabilities import Limits
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.split import LEARNED
from tests.support import FIXTURES, settings

KNEE = "knee-rehabilitation.json"


class World:
    """A shared-plan store, a sync engine, and a separate 'EHR' client editing the same server."""

    def __init__(self, engine, fhir_base_url: str) -> None:
        self.db = engine
        self.settings = settings(fhir_base_url=fhir_base_url)
        self.client = FhirClient(fhir_base_url, timeout=10)
        self.sync = SyncEngine(UnitOfWork(engine), self.client, self.settings, utcnow)
        self.ehr = FhirClient(fhir_base_url, timeout=10)

    def add_plan(self, fixture: str = KNEE, plan_id: str | None = None) -> Plan:
        plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / fixture).read_text()))
        plan.id = plan_id or f"{plan.id}-{uuid.uuid4().hex[:6]}"
        plan.patient.mrn = f"MRN-{uuid.uuid4().hex[:8]}"
        plan.touch(utcnow().isoformat())
        with UnitOfWork(self.db) as uow:
            uow.plans.save(plan)
            uow.commit()
        return plan

    def plan(self, plan_id: str) -> Plan:
        with UnitOfWork(self.db) as uow:
            return uow.plans.get(plan_id)

    def change(self, plan_id: str, edit) -> None:
        with UnitOfWork(self.db) as uow:
            plan = uow.plans.get(plan_id)
            edit(plan)
            plan.touch(utcnow().isoformat())
            uow.plans.save(plan)
            uow.commit()

    def server_goal(self, plan_id: str, goal_id: str) -> dict:
        return self.ehr.find_one("Goal", {"identifier": f"{self.settings.identifier_base}/goal|{plan_id}/{goal_id}"})

    def ehr_edit_goal(self, plan_id: str, goal_id: str, edit) -> dict:
        goal = self.server_goal(plan_id, goal_id)
        edit(goal)
        return self.ehr.request("PUT", f"Goal/{goal['id']}", json=goal).json()

    def requests_for(self, action) -> int:
        before = self.client.requests_sent
        action()
        return self.client.requests_sent - before


@pytest.fixture
def world(engine, fhir_base_url):
    return World(engine, fhir_base_url)


@pytest.fixture
def hapi_world(engine, fhir_hapi_url):
    """A world on the hapi profile (no transaction limits), in a process that has read its CapabilityStatement
    already (it publishes no limits): a push costs exactly its Patient lookup and one transaction."""
    LEARNED.remember_read(fhir_hapi_url, Limits())
    return World(engine, fhir_hapi_url)


def test_a_changed_plan_costs_one_transaction_and_an_unchanged_one_nothing(hapi_world):
    world = hapi_world
    plan = world.add_plan()
    first = world.sync.push(plan.id)
    assert (first.status, first.requests) == ("in_sync", 2)  # patient lookup + one transaction
    assert world.sync.push(plan.id).requests == 0
    world.change(plan.id, lambda p: setattr(p.goals[0], "status_reason", "knee swelling"))
    changed = world.sync.push(plan.id)
    assert (changed.status, changed.requests) == ("in_sync", 1)
    assert world.server_goal(plan.id, plan.goals[0].id)["statusReason"] == "knee swelling"
    assert world.sync.push(plan.id).requests == 0
    status = world.sync.status(plan.id)
    goal_link = next(r for r in status.resources if r["key"] == f"goal:{plan.goals[0].id}")
    assert goal_link["version"] == "2"


def test_on_medplum_a_plan_over_its_limits_costs_its_split_transactions_and_an_unchanged_one_nothing(
    engine, fhir_medplum_url
):
    """The same pushes on the medplum profile (8 entries once any is conditional). The knee plan's first Bundle
    is 13 conditional creates: the Patient, 4 people and the CareTeam, then its 4 Goals, 2 check-ins and the
    CarePlan. An update still carries the people as conditional creates (12 entries): two transactions too."""
    world = World(engine, fhir_medplum_url)
    plan = world.add_plan()
    first = world.sync.push(plan.id)
    # the Patient lookup, the CapabilityStatement (read once: the Bundle is over 8 entries), two transactions
    assert (first.status, first.requests) == ("in_sync", 1 + 1 + 2)
    assert world.sync.push(plan.id).requests == 0
    world.change(plan.id, lambda p: setattr(p.goals[0], "status_reason", "knee swelling"))
    changed = world.sync.push(plan.id)
    assert (changed.status, changed.requests) == ("in_sync", 2)  # the limits are known: two transactions
    assert world.server_goal(plan.id, plan.goals[0].id)["statusReason"] == "knee swelling"
    assert world.sync.push(plan.id).requests == 0
    status = world.sync.status(plan.id)
    goal_link = next(r for r in status.resources if r["key"] == f"goal:{plan.goals[0].id}")
    assert goal_link["version"] == "2"  # created whole in one transaction, then changed once


def test_pushing_twice_never_duplicates(world):
    plan = world.add_plan()
    world.sync.push(plan.id)
    with UnitOfWork(world.db) as uow:  # forget what was pushed: the next push is conditional again
        uow.sync.state(plan.id).pushed_hash = None
        uow.commit()
    world.sync.push(plan.id)
    for goal in plan.goals:
        found = world.ehr.search("Goal", {"identifier": f"{world.settings.identifier_base}/goal|{plan.id}/{goal.id}"})
        assert len(found) == 1


@pytest.mark.parametrize("mrn", ["12,34", "ward\\7"])
def test_an_mrn_with_search_special_characters_names_one_patient_however_often_it_is_pushed(
    engine, fhir_profile_url, mrn
):
    """FHIR search splits a value on `,` and reads `\\` and `$` as escapes: an MRN holding them must be
    escaped in every conditional URL and search, or each push's `If-None-Exist` matches nothing and the
    Patient is created again, and a pull by MRN finds nobody."""
    world = World(engine, fhir_profile_url)
    plan = world.add_plan()
    mrn = f"{mrn}-{uuid.uuid4().hex[:6]}"
    world.change(plan.id, lambda p: setattr(p.patient, "mrn", mrn))
    for title in ("first", "second"):
        world.change(plan.id, lambda p, title=title: setattr(p, "title", title))
        with UnitOfWork(world.db) as uow:  # forget the links: the next push finds the Patient by its MRN again
            for link in uow.links.for_plan(plan.id):
                if link.resource_type == "Patient":
                    uow.session.delete(link)
            uow.commit()
        assert world.sync.push(plan.id).status == "in_sync"
    mrn_system = world.settings.mrn_system
    everyone = world.ehr.search("Patient", {"identifier": f"{mrn_system}|", "_count": "1000"})
    assert [p["id"] for p in everyone if {"system": mrn_system, "value": mrn} in p.get("identifier", [])] == [
        world.ehr.find_one("Patient", {"identifier": codes.identifier_token(mrn_system, mrn)})["id"]
    ]


def test_an_ehr_edit_flows_into_the_plan(world):
    plan = world.add_plan()
    world.sync.push(plan.id)
    goal_id = plan.goals[0].id

    def edit(goal):
        goal["lifecycleStatus"] = "on-hold"
        goal["note"] = [*goal.get("note", []), {"text": "paused during the flu", "authorString": "Dr Ward"}]
        goal["target"][0].pop("dueDuration", None)
        goal["target"][0]["dueDate"] = "2027-06-30"

    world.ehr_edit_goal(plan.id, goal_id, edit)
    result = world.sync.pull_plans([plan.id])
    assert result.outcomes == {plan.id: "updated"}
    goal = world.plan(plan.id).goal(goal_id)
    assert goal.lifecycle_status == "on-hold"
    assert goal.notes[-1] == Note(text="paused during the flu", author_name="Dr Ward")
    assert goal.targets[0].due_date == "2027-06-30"
    assert world.sync.status(plan.id).status == "in_sync"
    assert world.sync.push(plan.id).requests == 0  # nothing of ours to send back


def test_edits_to_different_fields_merge_and_both_reach_the_server(world):
    plan = world.add_plan()
    world.sync.push(plan.id)
    goal_id = plan.goals[0].id
    world.ehr_edit_goal(plan.id, goal_id, lambda g: g.update(statusReason="changed in the EHR"))
    world.change(plan.id, lambda p: setattr(p.goal(goal_id), "start_date", "2026-12-01"))
    result = world.sync.push(plan.id)  # 409 on If-Match -> pull, merge, push again
    assert result.status == "in_sync"
    server = world.server_goal(plan.id, goal_id)
    assert (server["statusReason"], server["startDate"]) == ("changed in the EHR", "2026-12-01")
    ours = world.plan(plan.id).goal(goal_id)
    assert (ours.status_reason, ours.start_date) == ("changed in the EHR", "2026-12-01")
    assert world.sync.status(plan.id).conflicts == []


def test_the_same_field_edited_on_both_sides_is_a_conflict_and_nothing_is_overwritten(world):
    plan = world.add_plan()
    world.sync.push(plan.id)
    goal_id = plan.goals[0].id
    world.ehr_edit_goal(plan.id, goal_id, lambda g: g.update(lifecycleStatus="on-hold"))
    world.change(plan.id, lambda p: setattr(p.goal(goal_id), "lifecycle_status", "completed"))
    result = world.sync.push(plan.id)
    assert result.status == "conflicted"
    assert world.server_goal(plan.id, goal_id)["lifecycleStatus"] == "on-hold"  # not pushed over
    (conflict,) = world.sync.status(plan.id).conflicts
    assert conflict["path"] == f"goals[id={goal_id}].lifecycle_status"
    assert (conflict["base"], conflict["ours"], conflict["theirs"]) == ("active", "completed", "on-hold")
    assert world.sync.push(plan.id).requests == 0  # a conflicted plan is not pushed

    world.sync.resolve(conflict["id"], "theirs")
    assert world.plan(plan.id).goal(goal_id).lifecycle_status == "on-hold"
    assert world.sync.push(plan.id).status == "in_sync"
    assert world.sync.status(plan.id).status == "in_sync"


def test_a_conflict_resolved_with_our_value_or_a_given_one_is_pushed(world):
    plan = world.add_plan()
    world.sync.push(plan.id)
    goal_id = plan.goals[0].id
    world.ehr_edit_goal(plan.id, goal_id, lambda g: g.update(statusReason="theirs"))
    world.change(plan.id, lambda p: setattr(p.goal(goal_id), "status_reason", "ours"))
    world.sync.push(plan.id)
    (conflict,) = world.sync.status(plan.id).conflicts
    world.sync.resolve(conflict["id"], "value", "agreed in the review")
    assert world.sync.push(plan.id).status == "in_sync"
    assert world.server_goal(plan.id, goal_id)["statusReason"] == "agreed in the review"


def test_a_goal_a_clinician_adds_to_the_careplan_arrives(world):
    plan = world.add_plan()
    world.sync.push(plan.id)
    careplan = world.ehr.find_one("CarePlan", {"identifier": f"{world.settings.identifier_base}/plan|{plan.id}"})
    new_goal = world.ehr.request(
        "POST",
        "Goal",
        json={
            "resourceType": "Goal",
            "lifecycleStatus": "proposed",
            "description": {"text": "Return to cycling"},
            "subject": careplan["subject"],
        },
    ).json()
    careplan["goal"].append({"reference": f"Goal/{new_goal['id']}"})
    world.ehr.request("PUT", f"CarePlan/{careplan['id']}", json=careplan)
    assert world.sync.pull_plans([plan.id]).outcomes == {plan.id: "updated"}
    added = world.plan(plan.id).goal(f"goal-{new_goal['id']}")
    assert added is not None and added.description.text == "Return to cycling"


def test_an_incremental_pull_reads_only_what_changed(world):
    plans = [world.add_plan() for _ in range(4)]
    for plan in plans:
        world.sync.push(plan.id)
    world.sync.pull_changed()  # sets the cursor
    world.ehr_edit_goal(plans[2].id, plans[2].goals[0].id, lambda g: g.update(statusReason="seen in clinic"))
    result = world.sync.pull_changed()
    assert result.outcomes == {plans[2].id: "updated"}
    assert result.requests <= 3  # one batch of the 4 "what changed" searches + 1 plan fetch (+1 for check-ins)
    assert world.plan(plans[2].id).goals[0].status_reason == "seen in clinic"
    assert world.sync.pull_changed().outcomes == {}


def test_pulls_follow_pages(world):
    plans = [world.add_plan() for _ in range(5)]
    for plan in plans:
        world.sync.push(plan.id)
    for plan in plans:
        world.ehr_edit_goal(plan.id, plan.goals[0].id, lambda g: g.update(statusReason="paged"))
    world.sync.puller.page_size = 2
    result = world.sync.pull_plans([p.id for p in plans])
    assert set(result.outcomes.values()) == {"updated"}
    assert all(world.plan(p.id).goals[0].status_reason == "paged" for p in plans)
