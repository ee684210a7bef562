"""A push that names a Goal the EHR deleted is never stuck: the server's refusal makes planbridge re-read.

A server that checks references on write (HAPI's default `enforce_referential_integrity_on_write`, Medplum's
`checkReferencesOnWrite`, the local server in both profiles) refuses a write naming a deleted or unknown resource:
400, `HAPI-1096: Resource Goal/5 is deleted, specified in path: CarePlan.goal` (`HAPI-1094` for one it never held;
Medplum: "Invalid reference (Gone)" / "(Not found)"). That is the EHR having changed under planbridge, not bad
content: `service.fhir.refusals` makes it a `FhirDanglingReference` (decision "merge"), the push re-reads the plan
and tries once more, and the pull drops the references it would write back to Goals the server no longer holds
(docs/sync.md, "Deletes in the EHR"). A second such refusal after the re-read is final (no retry storm).

Every integration test runs on SQLite against the medplum profile and on PostgreSQL against the hapi one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.fhir import refusals
from service.fhir.client import FhirClient
from service.fhir.errors import FhirError, FhirGone, FhirNotFound, FhirValidationFailed, FhirVersionConflict
from service.fhir.refusals import FhirDanglingReference
from service.sync.adopt import Target
from service.sync.deletions import kept_goal_refs, without_refs
from tests.adoption_model_support import AdoptionWorld
from tests.sync_model_support import SyncWorld


@pytest.fixture
def world(engine, fhir_profile_url):
    return AdoptionWorld(engine, fhir_profile_url)


def _refusing(monkeypatch: pytest.MonkeyPatch, *, history: bool, lookups: bool) -> None:
    """A server without instance history (`GET Goal/X/_history` refused) and/or lookups of Goals by id
    (`GET Goal?_id=…`; the incremental pull's `_lastUpdated` searches still answer)."""
    request = FhirClient.request

    def refusing(self: FhirClient, method: str, path: str, **kwargs: Any) -> Any:
        params = kwargs.get("params") or {}
        lookup = path == "Goal" and "_id" in params and "_lastUpdated" not in params
        if method == "GET" and ((history and path.endswith("/_history")) or (lookups and lookup)):
            raise FhirError("not supported here", status=405)
        return request(self, method, path, **kwargs)

    monkeypatch.setattr(FhirClient, "request", refusing)


@pytest.fixture
def no_history(monkeypatch):
    """A server without instance history: the pull tells deleted Goals by one lookup by id."""
    _refusing(monkeypatch, history=True, lookups=False)


@pytest.fixture
def blind(monkeypatch):
    """A server that can tell planbridge nothing of a deleted Goal: no instance history, no lookup by id."""
    _refusing(monkeypatch, history=True, lookups=True)


def _adopted(world: AdoptionWorld) -> tuple[str, str, list[str]]:
    """The EHR authors a CarePlan with two Goals (one activity naming each); planbridge adopts it. Return the plan
    id, the CarePlan's id and its Goals."""
    mrn = world.ehr_patient()
    authored = world.ehr_careplan(
        mrn, goals=2, checkins=1, careteam=False, own_identifiers=True, created=True, activities=True
    )
    assert world.sync.adopt(Target(careplan_id=authored.id)).outcomes == {authored.plan_id: "new"}
    return authored.plan_id, authored.id, authored.goals


def _references(value: object) -> list[str]:
    text = json.dumps(value)
    return [part.split('"')[0] for part in text.split('"reference": "')[1:]]


def _transactions(world: AdoptionWorld, since: int) -> list[str]:
    """What the server answered each transaction planbridge sent since log entry `since`."""
    return [outcome for method, path, _, outcome in world.client.log[since:] if method == "POST" and path == ""]


def _retitle(world: AdoptionWorld, plan_id: str, title: str) -> None:
    status, detail = world.team("plan.updated", plan_id=plan_id, title=title)
    assert status == 202, detail


# ---------------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("status", "issue"),
    [
        (
            400,
            {
                "code": "processing",
                "diagnostics": "HAPI-1096: Resource Goal/5 is deleted, specified in path: CarePlan.goal",
            },
        ),
        (
            400,
            {
                "code": "processing",
                "diagnostics": "HAPI-1094: Resource Goal/5 not found, specified in path: CarePlan.goal",
            },
        ),
        (
            400,
            {
                "code": "processing",
                "diagnostics": "HAPI-0550: HAPI-1096: Resource Goal/5 is deleted, specified in path: CarePlan.goal",
            },
        ),
        (
            400,
            {
                "code": "structure",
                "details": {"text": "Invalid reference (Not found)"},
                "expression": ["CarePlan.goal"],
            },
        ),
        (
            400,
            {"code": "structure", "details": {"text": "Invalid reference (Gone)"}, "expression": ["CarePlan.goal[0]"]},
        ),
        (
            422,
            {
                "code": "processing",
                "diagnostics": "HAPI-1096: Resource Patient/1 is deleted, specified in path: Goal.subject",
            },
        ),
    ],
    ids=["hapi-deleted", "hapi-not-found", "hapi-in-transaction", "medplum-not-found", "medplum-gone", "422"],
)
def test_a_write_refused_for_naming_a_deleted_or_missing_resource_is_a_merge(status, issue):
    """Without the fix every 400 was a `FhirValidationFailed` (decision "stop"): the push never re-read."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", **issue}]}
    kind = refusals.classify(status, outcome)
    assert kind is FhirDanglingReference and issubclass(kind, FhirValidationFailed)
    assert kind("refused", status=status, outcome=outcome).decision == "merge"


@pytest.mark.parametrize(
    ("status", "diagnostics", "expected"),
    [
        (
            400,
            "HAPI-0541: Unable to satisfy placeholder ID urn:uuid:1 found in element named 'goal'",
            FhirValidationFailed,
        ),
        (400, "Goal.description: minimum required = 1, but only found 0", FhirValidationFailed),
        (404, "HAPI-2001: Resource Goal/5 is not known", FhirNotFound),
        (410, "HAPI-2244: Resource Goal/5 is deleted", FhirGone),
        (409, "HAPI-0989: Trying to update Goal/1/_history/1 but this is not the current version", FhirVersionConflict),
    ],
)
def test_other_refusals_are_read_as_before(status, diagnostics, expected):
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}],
    }
    assert refusals.classify(status, outcome) is expected


# ---------------------------------------------------------------------------------------------- what the pull keeps


def test_the_references_a_pull_would_keep_to_missing_goals_are_found_and_dropped_everywhere():
    """A Goal reference outside CarePlan.goal (an activity's goal, a Goal's extension, a versioned reference) is
    found and dropped too; what names only Goals the server holds is left as it is."""
    replaced = {
        "url": "http://hl7.org/fhir/StructureDefinition/resource-replaces",
        "valueReference": {"reference": "Goal/9"},
    }
    careplan = {
        "resourceType": "CarePlan",
        "goal": [{"reference": "Goal/1"}, {"reference": "Goal/7", "display": "gone"}],
        "activity": [
            {"detail": {"status": "not-started", "goal": [{"reference": "Goal/8/_history/2"}]}},
            {"reference": {"reference": "ServiceRequest/3"}, "detail": {"goal": [{"reference": "Goal/1"}]}},
        ],
    }
    index = {
        "Goal/1": {"resourceType": "Goal", "id": "1", "extension": [replaced, {"url": "x", "valueString": "kept"}]}
    }
    assert kept_goal_refs(careplan, index) == ["Goal/7", "Goal/8", "Goal/9"]

    out = without_refs(careplan, {"Goal/7", "Goal/8"})
    assert out["goal"] == [{"reference": "Goal/1"}]
    assert "goal" not in out["activity"][0]["detail"] and out["activity"][1] == careplan["activity"][1]
    assert careplan["goal"][1]["reference"] == "Goal/7", "the pulled CarePlan itself was changed"
    assert without_refs(index["Goal/1"], {"Goal/9"})["extension"] == [{"url": "x", "valueString": "kept"}]
    assert without_refs(careplan, {"Goal/42"}) is careplan


# ---------------------------------------------------------------------------------------------- on the server


def test_a_push_naming_a_goal_the_ehr_deleted_reads_the_server_and_lands(world):
    """The EHR deletes a Goal of an adopted plan; the team retitles the plan; the push (no pull between) writes the
    CarePlan still naming the deleted Goal. The server refuses (400 HAPI-1096); before the fix that was final, and
    every later push was refused the same way. Now the push re-reads the plan (the goal is recorded deleted, its
    references dropped) and sends once more."""
    plan_id, careplan_id, goals = _adopted(world)
    deleted = goals[0]
    goal_id = f"goal-{deleted.split('/')[1]}"
    world.ehr_delete(deleted)
    _retitle(world, plan_id, "After the EHR's delete")

    since = len(world.client.log)
    pushed = world.sync.push(plan_id)

    assert _transactions(world, since) == ["FhirDanglingReference", "200"]
    state = world.sync.status(plan_id)
    assert (pushed.status, state.status, state.last_error) == ("in_sync", "in_sync", None)
    careplan = world.ehr.request("GET", f"CarePlan/{careplan_id}").json()
    assert careplan["title"] == "After the EHR's delete"
    assert deleted not in _references(careplan), "the pushed CarePlan names the deleted Goal"
    document = world.plan_doc(plan_id)
    (goal,) = [g for g in document["goals"] if g["id"] == goal_id]
    assert goal.get("removed_in_ehr", {}).get("how") == "deleted"
    assert deleted not in _references(document)
    assert world.open_conflicts(plan_id) == []


def test_a_goal_the_ehr_added_and_deleted_before_any_pull_is_no_longer_named(world):
    """The EHR adds a Goal of its own to the adopted CarePlan and deletes it before planbridge ever read it. It was
    never one of the plan's goals, so the re-read after the push met the EHR's newer CarePlan (a version conflict)
    kept the CarePlan's reference to it as it came (`careplan_extra.goal`), and the push after it, and every one
    after, was refused (HAPI-1096). The pull now drops a kept reference to a Goal the server no longer holds, so
    the push after the re-read lands."""
    plan_id, careplan_id, _ = _adopted(world)
    added = f"Goal/{world.ehr_add_goal(plan_id, 'EHR goal')['id']}"
    world.ehr_delete(added)
    _retitle(world, plan_id, "After the EHR's add and delete")

    since = len(world.client.log)
    assert world.sync.push(plan_id).status == "in_sync"
    assert _transactions(world, since) == ["FhirVersionConflict", "200"]
    careplan = world.ehr.request("GET", f"CarePlan/{careplan_id}").json()
    assert careplan["title"] == "After the EHR's add and delete" and added not in _references(careplan)
    assert added not in _references(world.plan_doc(plan_id)), "the plan keeps a reference to the deleted Goal"
    assert world.sync.status(plan_id).last_error is None


def test_a_pull_drops_a_kept_reference_to_a_goal_the_server_no_longer_holds_for_one_request_more(world):
    """The same, read by a pull: the EHR's CarePlan names a Goal it deleted that was never a plan goal. The pull's
    history read does not tell (the Goal names no goal of the plan), so one search (`Goal?_id=`) does; the
    reference is not kept, and a pull with nothing dangling asks nothing more."""
    plan_id, _, _ = _adopted(world)
    quiet = len(world.client.log)
    assert world.sync.pull_plans([plan_id]).outcomes == {plan_id: "unchanged"}
    baseline = len(world.client.log) - quiet
    added = f"Goal/{world.ehr_add_goal(plan_id, 'EHR goal')['id']}"
    world.ehr_delete(added)

    since = len(world.client.log)
    result = world.sync.pull_plans([plan_id])
    asked = world.client.log[since:]
    assert added not in _references(world.plan_doc(plan_id)), "the plan keeps a reference to the deleted Goal"
    lookups = [(m, p, q) for m, p, q, _ in asked if p == "Goal" and "_id" in (q or {})]
    assert len(lookups) == 1, asked
    assert len(asked) == baseline + 2 == result.requests, asked  # the Goal's history, and the one lookup
    assert world.sync.status(plan_id).status == "in_sync"


def test_on_a_server_without_instance_history_a_deleted_goal_of_the_plan_is_recorded_deleted(world, no_history):
    """The EHR deletes a goal of the plan on a server without instance history, and a push (no pull between) names
    it: refused (HAPI-1096), re-read. The pull could not tell a deleted goal of the plan from one the CarePlan
    stopped naming: it recorded it `removed` and kept the reference to the deleted Goal, so the push after the
    re-read was refused again. One lookup by id now tells the Goal is gone, and the plan's links which goal it was:
    it is recorded deleted (its last version unknown), nothing names it, and the push lands."""
    plan_id, careplan_id, goals = _adopted(world)
    deleted = goals[0]
    goal_id = f"goal-{deleted.split('/')[1]}"
    world.ehr_delete(deleted)
    _retitle(world, plan_id, "Without history")

    since = len(world.client.log)
    assert world.sync.push(plan_id).status == "in_sync"
    assert _transactions(world, since) == ["FhirDanglingReference", "200"]
    document = world.plan_doc(plan_id)
    (goal,) = [g for g in document["goals"] if g["id"] == goal_id]
    assert goal.get("removed_in_ehr", {}).get("how") == "deleted", goal.get("removed_in_ehr")
    assert goal["removed_in_ehr"].get("version") is None
    assert deleted not in _references(document)
    careplan = world.ehr.request("GET", f"CarePlan/{careplan_id}").json()
    assert careplan["title"] == "Without history" and deleted not in _references(careplan)
    assert world.sync.pull_plans([plan_id]).outcomes == {plan_id: "unchanged"}


def test_a_second_dangling_reference_refusal_after_the_re_read_is_final(world, blind):
    """A server that cannot tell planbridge the Goal was deleted: the re-read keeps the reference, and the second
    transaction is refused like the first. That refusal is final, as a 400 always was: two transactions, no third,
    the plan `failed` with the server's answer recorded, and the outbox backs off rather than retrying at once."""
    plan_id, _, goals = _adopted(world)
    world.ehr_delete(goals[0])
    _retitle(world, plan_id, "Blind")

    since = len(world.client.log)
    with pytest.raises(FhirDanglingReference) as refused:
        world.sync.push(plan_id)
    assert refused.value.decision == "stop"
    assert _transactions(world, since) == ["FhirDanglingReference", "FhirDanglingReference"]
    state = world.sync.status(plan_id)
    assert state.status == "failed"
    assert state.last_error is not None and "HAPI-1096" in state.last_error and goals[0] in state.last_error

    since = len(world.client.log)
    assert world.worker.process_one()  # the queued push: refused the same way, once, then it waits
    assert _transactions(world, since) == ["FhirDanglingReference", "FhirDanglingReference"]
    assert not world.worker.process_one(), "the refused push was retried at once"


def test_a_goal_whose_revision_the_ehr_deleted_no_longer_names_it(engine, fhir_profile_url):
    """Found by the sync model once the pull dropped such references: the team revises a goal (the replaced Goal
    gets a `replacement` relationship naming the revision's Goal) and the EHR deletes the revision's Goal. The pull
    kept the replaced Goal's extension naming it as it came (the revision is no goal of the plan any more), so
    every push wrote it back: a server checking every reference (Medplum's `checkReferencesOnWrite`, the local
    medplum profile) refused it each time (HAPI-1096), re-read or not. The pull now drops the extension with the
    reference, and the push lands."""
    world = SyncWorld(engine, fhir_profile_url)
    plan_id = world.add_plan("knee-rehabilitation.json")
    assert world.sync.push(plan_id).status == "in_sync"
    revised = {"id": "goal-new", "description": "Bend the knee to 120 degrees"}
    status, detail = world.team(
        "goal.revised", plan_id=plan_id, replaces="goal-flexion", goal=revised, revised_by={"kind": "patient"}
    )
    assert status == 202, detail
    assert world.sync.push(plan_id).status == "in_sync"
    replaced = f"Goal/{world.ehr_goal(plan_id, 'goal-flexion')['id']}"
    new_goal = f"Goal/{world.ehr_goal(plan_id, 'goal-new')['id']}"
    assert new_goal in _references(world.ehr.request("GET", replaced).json()), "no replacement link was written"
    world.ehr_delete(new_goal)
    world.sync.pull_plans([plan_id])
    assert new_goal not in _references(world.plan_doc(plan_id)), "the plan keeps a reference to the deleted Goal"

    status, detail = world.team("plan.updated", plan_id=plan_id, title="After the EHR's delete")
    assert status == 202, detail
    assert world.sync.push(plan_id).status == "in_sync"
    assert world.sync.status(plan_id).last_error is None
    assert new_goal not in _references(world.ehr.request("GET", replaced).json())
    assert world.find("CarePlan", "plan", plan_id)["title"] == "After the EHR's delete"
