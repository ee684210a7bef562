"""An incremental pull learns of the Goals the EHR deleted since its cursor (docs/sync.md, "Deletions"): a deleted
resource is no match of the `_lastUpdated` searches, so the pull also reads `Goal/_history?_since=<cursor>` (the
batch's last entry) and pulls the plans whose links name a Goal deleted there. On the real local FHIR server in
both profiles, on SQLite; servers without type-level history, or without batch, simulated with `responses` in
front of it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import responses

from service.fhir.client import FhirClient
from service.fhir.errors import FhirError
from service.fhir.server_check import check_server
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.pull import CURSOR, batch_cursor, history_cursor
from service.sync.pull_search import HISTORY_TYPES
from tests.integration.test_pull_batch import BATCH, _forward
from tests.sync_model_support import SyncWorld

FIXTURE = "knee-rehabilitation.json"


@pytest.fixture
def world(tmp_path, fhir_profile_url):
    engine = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
    upgrade(engine)
    yield SyncWorld(engine, fhir_profile_url)
    engine.dispose()


def _pushed(world: SyncWorld) -> str:
    plan_id = world.add_plan(FIXTURE)
    assert world.sync.push(plan_id).status == "in_sync"
    world.sync.pull_plans([plan_id])
    return plan_id


def _cursor(world: SyncWorld, name: str) -> str | None:
    with UnitOfWork(world.db) as uow:
        return uow.sync.cursor(name)


def _sent_batches(server: responses.RequestsMock) -> list[list[str]]:
    return [
        [e["request"]["url"].split("?")[0] for e in json.loads(call.request.body)["entry"]]
        for call in server.calls
        if call.request.method == "POST" and json.loads(call.request.body).get("type") == "batch"
    ]


def test_a_goal_of_planbridges_own_plan_the_ehr_deletes_is_pulled_once_by_the_next_incremental_pull(world):
    """The EHR deletes a Goal of a plan planbridge authored and changes nothing else: the next incremental pull
    pulls the plan (one batch, the plan, its check-ins, the deleted Goal's history) and records the goal deleted;
    the pull after it pulls nothing."""
    plan_id = _pushed(world)
    other = _pushed(world)
    assert world.sync.pull_changed().outcomes == {}
    goal = world.ehr_goal(plan_id, "goal-exercise")
    world.ehr_delete(f"Goal/{goal['id']}")

    pulled = world.sync.pull_changed()

    assert pulled.outcomes == {plan_id: "updated"}, pulled.outcomes
    assert other not in pulled.outcomes
    kept = world.plan(plan_id).goal("goal-exercise")
    assert kept is not None and kept.removed_in_ehr is not None and kept.removed_in_ehr.how == "deleted"
    assert pulled.requests <= 4, pulled.requests
    again = world.sync.pull_changed()
    assert (again.outcomes, again.requests) == ({}, 1)


def test_a_goal_the_ehr_took_out_of_the_careplan_then_deleted_is_not_pulled_again_and_again(world):
    """The EHR takes the Goal out of the CarePlan (a new CarePlan version, which the searches see) and then deletes
    it. The cursor stops at the CarePlan's write, before the delete, so the next history read lists the delete
    again; the plan's link to the Goal is dropped once the plan was pulled for it, so it is pulled once."""
    plan_id = _pushed(world)
    assert world.sync.pull_changed().outcomes == {}
    goal = world.ehr_goal(plan_id, "goal-exercise")
    careplan = world.find("CarePlan", "plan", plan_id)
    assert careplan is not None
    careplan["goal"] = [r for r in careplan["goal"] if r["reference"] != f"Goal/{goal['id']}"]
    for activity in careplan.get("activity", []):
        detail = activity.get("detail", {})
        detail["goal"] = [r for r in detail.get("goal", []) if r["reference"] != f"Goal/{goal['id']}"]
        if not detail["goal"]:
            del detail["goal"]
    world.ehr_put(careplan, careplan["meta"]["versionId"])
    world.ehr_delete(f"Goal/{goal['id']}")

    assert plan_id in world.sync.pull_changed().outcomes
    again = world.sync.pull_changed()
    assert (again.outcomes, again.requests) == ({}, 1), "the plan was pulled again for the same delete"


def test_a_server_without_type_level_history_is_remembered_and_pulls_go_on(world, fhir_profile_url):
    """The batch answers the history entry 405 (a server without type-level history): the searches' changes are
    pulled, the refusal is remembered (`fhir-history:<hash>`), and the next pulls leave the history out of their
    batch, so they cost what they did before. Without batch either, the history is not asked on its own."""
    plan_id = _pushed(world)
    assert world.sync.pull_changed().outcomes == {}

    def no_history(request: Any) -> tuple[int, dict[str, str], str]:
        answer = _forward(fhir_profile_url, request.body)
        for entry, result in zip(json.loads(request.body)["entry"], answer["entry"], strict=True):
            if "/_history" in entry["request"]["url"]:
                result.clear()
                result["response"] = {"status": "405 Method Not Allowed"}
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(answer)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as server:
        server.add_passthru(fhir_profile_url)
        server.add_callback(responses.POST, fhir_profile_url, callback=no_history, match=BATCH)
        world.ehr_edit(
            f"Goal/{world.ehr_goal(plan_id, 'goal-exercise')['id']}", lambda g: g.update(statusReason="edited")
        )
        first = world.sync.pull_changed()
        assert first.outcomes == {plan_id: "updated"}
        assert (_cursor(world, history_cursor(fhir_profile_url)) or "").startswith("refused ")
        second = world.sync.pull_changed()
        assert (second.outcomes, second.requests) == ({}, 1)
        batches = _sent_batches(server)
        assert batches[0][-4:] == [f"{rtype}/_history" for rtype in HISTORY_TYPES]
        assert not [url for url in batches[1] if url.endswith("/_history")]

        # without batch too: no history request of its own while the refusal is remembered
        with UnitOfWork(world.db) as uow:
            uow.sync.set_cursor(batch_cursor(world.client.base_url), f"refused {world.clock().isoformat()}")
            uow.commit()
        world.client.log.clear()
        assert world.sync.pull_changed().outcomes == {}
        assert not [entry for entry in world.client.log if "_history" in str(entry)]


def test_a_history_the_server_fails_to_answer_fails_the_pull_and_the_cursor_stays(world, fhir_profile_url):
    """A history entry answered with another error (a 500) is read again on its own; when that fails too the pull
    fails and the cursor stays, so no deletion is skipped. On its own it works: the deletion is pulled."""
    plan_id = _pushed(world)
    assert world.sync.pull_changed().outcomes == {}
    cursor = _cursor(world, CURSOR)
    world.ehr_delete(f"Goal/{world.ehr_goal(plan_id, 'goal-exercise')['id']}")

    def history_fails(request: Any) -> tuple[int, dict[str, str], str]:
        answer = _forward(fhir_profile_url, request.body)
        for entry, result in zip(json.loads(request.body)["entry"], answer["entry"], strict=True):
            if entry["request"]["url"].startswith("Goal/_history"):
                result.clear()
                result["response"] = {"status": "500 Internal Server Error"}
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(answer)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as server:
        server.add_passthru(fhir_profile_url)
        server.add_callback(responses.POST, fhir_profile_url, callback=history_fails, match=BATCH)
        alone = server.add(responses.GET, f"{fhir_profile_url}/Goal/_history", status=500, json={})
        with pytest.raises(FhirError):
            world.sync.pull_changed()
        assert _cursor(world, CURSOR) == cursor
        assert world.plan(plan_id).goal("goal-exercise").removed_in_ehr is None
        server.remove(alone)
        assert world.sync.pull_changed().outcomes == {plan_id: "updated"}
    assert world.plan(plan_id).goal("goal-exercise").removed_in_ehr is not None
    assert _cursor(world, history_cursor(fhir_profile_url)) is None


def test_fhir_check_says_plainly_when_the_server_lacks_type_level_history(fhir_profile_url):
    """`planbridge fhir check` probes type-level history as it probes batch: the local server lists a deleted
    scratch resource's `DELETE` in `Basic/_history?_since=`; a server answering it 405 is named without it, with
    what pulls then miss (deletions between full pulls), and, the feature being optional, not as missing."""
    client = FhirClient(fhir_profile_url, timeout=10)
    has = check_server(client, client.capabilities()).features["type_history"]
    assert (has.ok, has.required, has.probed) == (True, False, True), has.detail
    assert has.detail == "`Basic/_history?_since=` lists a deleted resource's `DELETE`"

    with responses.RequestsMock(assert_all_requests_are_fired=True) as server:
        server.add_passthru(fhir_profile_url)
        refused = server.add(
            responses.GET,
            re.compile(re.escape(f"{fhir_profile_url}/Basic/_history") + r"(\?.*)?$"),
            status=405,
            json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-supported"}]},
        )
        checked = check_server(client, client.capabilities())
    lacks = checked.features["type_history"]
    assert refused.call_count == 1
    assert (lacks.ok, lacks.required, lacks.probed) == (False, False, True)
    assert "405" in lacks.detail and "Basic/_history" in lacks.detail
    assert "cannot see deletions between full pulls" in lacks.without_it
    assert not any(gap.startswith("type_history") for gap in checked.missing())
    assert checked.features["instance_history"].ok and checked.features["batch"].ok  # the other probes unchanged


def test_each_history_is_read_from_its_newest_version_not_again_from_an_old_pull_cursor(world, monkeypatch):
    """Bug fixed (found in review): the histories were read from the pull's cursor, which moves only when one of
    planbridge's resources changes. On an EHR writing Goals (or Observations) planbridge has nothing to do with,
    every incremental pull read them all again, page after page, for as long as the plans stayed unchanged. Each
    type's history now starts where its previous read ended (its newest version, `history-since:<Type>`)."""
    monkeypatch.setattr("service.sync.pull_search.HISTORY_PAGE", 5)
    _pushed(world)
    assert world.sync.pull_changed().outcomes == {}
    patient = world.ehr.request("POST", "Patient", json={"resourceType": "Patient"}).json()
    for n in range(12):  # the EHR's own Goals, of no plan: every one is in the Goal history
        goal = {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": f"unrelated {n}"},
            "subject": {"reference": f"Patient/{patient['id']}"},
        }
        world.ehr.request("POST", "Goal", json=goal)

    first = world.sync.pull_changed()
    assert first.outcomes == {} and first.requests >= 3  # the batch, then the Goal history's further pages
    newest = _cursor(world, "history-since:Goal")
    assert newest is not None and (search_cursor := _cursor(world, CURSOR)) is not None and newest > search_cursor

    again = world.sync.pull_changed()
    assert (again.outcomes, again.requests) == ({}, 1), "the Goal history was read again from the old cursor"
    assert _cursor(world, "history-since:Goal") == newest
