"""Pushing a plan larger than a server's transaction limits (Medplum: 8 entries once any entry is
conditional, 50 updates): split into dependency-ordered transactions, each within the limits, read back
complete and correctly linked, with no duplicates; the same plan is one transaction where there are no
limits. Against the real local FHIR server in both profiles, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

import pytest
import responses

from service.domain import codec
from service.domain.model import Plan
from service.fhir.errors import FhirTransactionTooLarge, FhirTransportError
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.split import LEARNED, MEDPLUM_LIMITS, fits
from tests.support import Clock, settings
from tests.sync_model_support import RecordingClient, SyncWorld, diff_paths

GOALS = 6


@pytest.fixture(autouse=True)
def _fresh_limits():
    """What a process learned of a server's limits lasts the process; each test starts unknowing."""
    LEARNED.forget()
    yield
    LEARNED.forget()


class Transactions(RecordingClient):
    """planbridge's FHIR client, keeping every transaction Bundle it sent; `fail_after` simulates a connection
    that breaks after the Nth transaction reached the server (and was applied)."""

    def __init__(self, *args: Any, fail_after: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bundles: list[dict[str, Any]] = []
        self.fail_after = fail_after

    def transaction(self, bundle: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        self.bundles.append(copy.deepcopy(bundle))
        answer = super().transaction(bundle, idempotent=idempotent)
        if self.fail_after is not None and len(self.bundles) == self.fail_after:
            raise FhirTransportError("POST [base] (transaction): ConnectionError")  # sent, answer lost
        return answer


def _world(engine, url: str, fail_after: int | None = None) -> tuple[SyncWorld, Transactions]:
    world = SyncWorld(engine, url)
    client = Transactions(url, timeout=10, max_retries=1, sleep=lambda _s: None, fail_after=fail_after)
    world.client = client
    world.fresh_planbridge()
    return world, client


def _large_plan(world: SyncWorld) -> str:
    """Store the knee plan grown to 6 goals with 2 check-ins each and a team of 4 (25 resources); the last
    goal revises the fifth, so goals reference goals too."""
    world_plan = world.add_plan("knee-rehabilitation.json")
    with UnitOfWork(world.db) as uow:
        plan = uow.plans.get(world_plan)
        assert plan is not None
        document = codec.to_dict(plan)
        walk = next(g for g in document["goals"] if g["id"] == "goal-walk")
        for n in range(len(document["goals"]), GOALS):
            extra = copy.deepcopy(walk)
            extra["id"] = f"goal-extra-{n}"
            extra["description"] = {"text": f"Extra goal {n}"}
            document["goals"].append(extra)
        document["goals"][-1]["replaces"] = document["goals"][-2]["id"]
        for goal in document["goals"]:
            goal["check_ins"] = [
                dict(copy.deepcopy(c), id=f"{goal['id']}-c{i}") for i, c in enumerate(walk["check_ins"])
            ]
        plan = codec.from_dict(Plan, document)
        plan.touch(world.clock().isoformat())
        uow.plans.save(plan)
        uow.commit()
    return world_plan


def _count(world: SyncWorld, resource_type: str, kind: str) -> Counter:
    system = f"{world.base}/{kind}"
    found = world.reader.search(resource_type, {"identifier": f"{system}|", "_count": "1000"})
    return Counter(i["value"] for r in found for i in r.get("identifier", []) if i.get("system") == system)


def _assert_linked(world: SyncWorld, plan_id: str, goals: int, check_ins: int, revised: bool = True) -> None:
    """Every resource once, and linked: CarePlan -> Goals and CareTeam, Goals <-> their Observations."""
    (careplan,) = world.reader.search("CarePlan", {"identifier": f"{world.base}/plan|{plan_id}"})
    goal_res = world.reader.search("Goal", {"identifier": f"{world.base}/goal|", "_count": "1000"})
    observations = world.reader.search("Observation", {"identifier": f"{world.base}/checkin|", "_count": "1000"})
    (team,) = world.reader.search("CareTeam", {"identifier": f"{world.base}/careteam|{plan_id}"})
    assert (len(goal_res), len(observations)) == (goals, check_ins)
    assert world.duplicates() == []
    assert sorted(r["reference"] for r in careplan["goal"]) == sorted(f"Goal/{g['id']}" for g in goal_res)
    assert careplan["careTeam"] == [{"reference": f"CareTeam/{team['id']}"}]
    by_goal: dict[str, set[str]] = {}
    for obs in observations:
        (pertains,) = [e for e in obs.get("extension", []) if e["url"].endswith("resource-pertainsToGoal")]
        by_goal.setdefault(pertains["valueReference"]["reference"], set()).add(f"Observation/{obs['id']}")
    for goal in goal_res:
        named = {r["reference"] for r in goal.get("outcomeReference", [])}
        assert named == by_goal.get(f"Goal/{goal['id']}", set()), goal["id"]
        assert goal["subject"] == careplan["subject"]
    targets = [
        part["valueReference"]["reference"]
        for g in goal_res
        for e in g.get("extension", [])
        if "goal-relationship" in e["url"]
        for part in e["extension"]
        if part["url"] == "target"
    ]
    if revised:
        sixth = world.find("Goal", "goal", f"{plan_id}/goal-extra-{GOALS - 1}")
        assert targets == [f"Goal/{sixth['id']}"]  # the fifth goal names the sixth as its replacement


def test_a_large_plan_pushes_to_medplum_split_and_reads_back_complete_and_linked(engine, fhir_medplum_url):
    world, client = _world(engine, fhir_medplum_url)
    plan_id = _large_plan(world)

    first = world.sync.push(plan_id)
    assert first.status == "in_sync", world.sync.status(plan_id).last_error
    assert first.resources == 25
    assert len(client.bundles) > 1
    assert all(fits(b["entry"], MEDPLUM_LIMITS) for b in client.bundles), [len(b["entry"]) for b in client.bundles]
    # patient lookup + the CapabilityStatement (the local server publishes its limits) + one per transaction
    assert first.requests == 2 + len(client.bundles)
    _assert_linked(world, plan_id, GOALS, 2 * GOALS)
    world.sync.pull_plans([plan_id])
    server = world.server(plan_id)
    assert diff_paths(world.plan_doc(plan_id), server.doc) == []

    assert world.sync.push(plan_id).requests == 0  # nothing changed
    before = len(client.bundles)

    def edit(plan: Plan) -> None:
        plan.goals[0].status_reason = "knee swelling"
        extra = copy.deepcopy(plan.goals[1].check_ins[0])
        extra.id = "late-check-in"
        plan.goals[1].check_ins.append(extra)

    world_edit(world, plan_id, edit)
    again = world.sync.push(plan_id)
    assert again.status == "in_sync", world.sync.status(plan_id).last_error
    assert all(fits(b["entry"], MEDPLUM_LIMITS) for b in client.bundles[before:])
    assert again.requests == len(client.bundles) - before  # the limits are known: no second read
    _assert_linked(world, plan_id, GOALS, 2 * GOALS + 1)
    assert world.server(plan_id).doc["goals"][0]["status_reason"] == "knee swelling"


def test_a_goal_with_more_check_ins_than_a_transaction_holds_is_created_then_written_whole(engine, fhir_medplum_url):
    """A Goal and its 8 check-in Observations name each other: 9 entries, more than Medplum allows in one
    transaction. The Goal is created without its outcomeReference, the Observations next, then the Goal whole."""
    world, client = _world(engine, fhir_medplum_url)
    plan_id = world.add_plan("cardiac-rehab-checkins.json")
    pushed = world.sync.push(plan_id)
    assert pushed.status == "in_sync", world.sync.status(plan_id).last_error
    assert len(client.bundles) > 1 and all(fits(b["entry"], MEDPLUM_LIMITS) for b in client.bundles)
    (whole,) = [e for b in client.bundles for e in b["entry"] if e["request"].get("ifMatch")]
    assert whole["request"]["url"].startswith("Goal/") and whole["request"]["ifMatch"] == 'W/"1"'
    assert len(whole["resource"]["outcomeReference"]) == 8
    (created,) = [e for b in client.bundles for e in b["entry"] if e["fullUrl"] == whole["fullUrl"] and e is not whole]
    assert "outcomeReference" not in created["resource"]  # created first without them
    _assert_linked(world, plan_id, 2, 8, revised=False)
    world.sync.pull_plans([plan_id])
    assert diff_paths(world.plan_doc(plan_id), world.server(plan_id).doc) == []
    assert world.sync.push(plan_id).requests == 0


def test_a_version_conflict_part_way_keeps_what_landed_merges_and_pushes_again(engine, fhir_medplum_url):
    world, client = _world(engine, fhir_medplum_url)
    plan_id = _large_plan(world)
    assert world.sync.push(plan_id).status == "in_sync"
    goal = world.ehr_goal(plan_id, "goal-car")
    world.ehr_edit(f"Goal/{goal['id']}", lambda g: g.update(statusReason="changed in the EHR"))

    def edit(plan: Plan) -> None:  # a new check-in on every goal: 6 new Observations, 6 Goals by id
        plan.goals[0].status_reason = "the team's change"
        for goal in plan.goals:
            extra = copy.deepcopy(goal.check_ins[0])
            extra.id = "new-check-in"
            goal.check_ins.append(extra)

    world_edit(world, plan_id, edit)
    logged = len(world.client.log)
    pushed = world.sync.push(plan_id)
    # the new Observations land; the Goals by id are refused (Goal/car moved); pull, merge, push again
    assert pushed.status == "in_sync", world.sync.status(plan_id).last_error
    posts = [outcome for method, path, _p, outcome in world.client.log[logged:] if method == "POST"]
    refused = posts.index("FhirVersionConflict")
    assert refused >= 1 and set(posts[:refused]) == {"200"} and posts[-1] == "200", posts
    assert all(fits(b["entry"], MEDPLUM_LIMITS) for b in client.bundles)
    assert world.sync.status(plan_id).conflicts == []
    _assert_linked(world, plan_id, GOALS, 3 * GOALS)
    assert world.ehr_goal(plan_id, "goal-car")["statusReason"] == "changed in the EHR"
    assert world.ehr_goal(plan_id, "goal-walk")["statusReason"] == "the team's change"
    assert world.plan(plan_id).goal("goal-car").status_reason == "changed in the EHR"


def world_edit(world: SyncWorld, plan_id: str, edit) -> None:
    with UnitOfWork(world.db) as uow:
        plan = uow.plans.get(plan_id)
        assert plan is not None
        edit(plan)
        plan.touch(world.clock().isoformat())
        uow.plans.save(plan)
        uow.commit()


def test_the_same_plan_is_one_transaction_on_the_hapi_profile(engine, fhir_hapi_url):
    world, client = _world(engine, fhir_hapi_url)
    plan_id = _large_plan(world)
    pushed = world.sync.push(plan_id)
    assert pushed.status == "in_sync"
    entries = client.bundles[0]["entry"] if len(client.bundles) == 1 else []
    assert len(entries) == 26 and entries[-1]["resource"]["resourceType"] == "Provenance"  # 25 + the Provenance
    assert pushed.requests == 3  # patient lookup, the CapabilityStatement (no limits), the transaction
    _assert_linked(world, plan_id, GOALS, 2 * GOALS)
    world_edit(world, plan_id, lambda p: setattr(p.goals[0], "status_reason", "knee swelling"))
    assert world.sync.push(plan_id).requests == 1  # limits read once per process and server


def test_a_small_plan_costs_one_transaction_and_no_capability_read(engine, fhir_medplum_url):
    world, client = _world(engine, fhir_medplum_url)
    plan_id = world.add_plan("minimal.json")
    pushed = world.sync.push(plan_id)
    assert (pushed.status, pushed.requests, len(client.bundles)) == ("in_sync", 2, 1)  # lookup + transaction
    assert not any(path == "metadata" for _m, path, _p, _s in client.log)


def test_a_crash_between_transactions_then_a_new_push_completes_without_duplicates(engine, fhir_medplum_url):
    crashing, client = _world(engine, fhir_medplum_url, fail_after=2)
    plan_id = _large_plan(crashing)
    with pytest.raises(FhirTransportError):
        crashing.sync.push(plan_id)  # transaction 2 was applied, its answer lost; 1 was recorded
    assert len(client.bundles) == 2
    with UnitOfWork(engine) as uow:
        assert uow.sync.state(plan_id).push_started_at is not None  # the next push reads the server first
        recorded = {link.local_key for link in uow.links.for_plan(plan_id)}
    assert len(recorded) == len(client.bundles[0]["entry"])

    world, again = _world(engine, fhir_medplum_url)
    world.settings, world.base = crashing.settings, crashing.base  # the same planbridge, restarted
    world.fresh_planbridge()
    pushed = world.sync.push(plan_id)
    assert pushed.status == "in_sync", world.sync.status(plan_id).last_error
    assert all(fits(b["entry"], MEDPLUM_LIMITS) for b in again.bundles)
    _assert_linked(world, plan_id, GOALS, 2 * GOALS)
    assert _count(world, "Practitioner", "member") == Counter(
        {f"{plan_id}/{m}": 1 for m in ("physio", "ot", "gp", "surgeon")}
    )


MEDPLUM_REFUSAL = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "invalid",
            "details": {"text": "Transaction requires strict isolation but has too many entries"},
        }
    ],
}


def _answer(bundle: dict[str, Any]) -> dict[str, Any]:
    entries = []
    for n, entry in enumerate(bundle["entry"]):
        url = entry["request"]["url"]
        rtype, rid = url.split("/") if "/" in url and "?" not in url else (entry["resource"]["resourceType"], f"x{n}")
        entries.append({"response": {"status": "201 Created", "location": f"{rtype}/{rid}/_history/1"}})
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


@responses.activate
def test_a_size_refusal_is_learned_and_split_and_never_retried_in_a_loop(engine):
    """A server that publishes no limits (real Medplum) refuses the whole Bundle: planbridge learns its caps and
    sends it again at once, split; a server that refuses even the split chunks is a stop, not a loop."""
    base = "https://medplum.test/fhir/R4"
    world_settings = settings(fhir_base_url=base)
    client = RecordingClient(base, timeout=5, max_retries=0, sleep=lambda _s: None)
    sync = SyncEngine(UnitOfWork(engine), client, world_settings, Clock())
    sent: list[int] = []

    def transaction(request) -> tuple[int, dict, str]:
        bundle = json.loads(request.body)
        sent.append(len(bundle["entry"]))
        if not fits(bundle["entry"], MEDPLUM_LIMITS) or refuse_everything:
            return 400, {}, json.dumps(MEDPLUM_REFUSAL)
        return 200, {}, json.dumps(_answer(bundle))

    refuse_everything = False
    responses.add(responses.GET, f"{base}/Patient", json={"resourceType": "Bundle", "type": "searchset"})
    responses.add(responses.GET, f"{base}/metadata", json={"resourceType": "CapabilityStatement", "rest": []})
    responses.add_callback(responses.POST, base, callback=transaction)
    world = SyncWorld(engine, base)  # only its database helpers: no request goes to `base` from it
    plan_id = world.add_plan("knee-rehabilitation.json")

    pushed = sync.push(plan_id)
    assert pushed.status == "in_sync"
    # refused once (13 entries and the Provenance), then split
    assert sent[0] == 14 and all(n <= 8 for n in sent[1:]) and len(sent) > 2
    assert pushed.requests == 2 + len(sent)  # patient lookup, CapabilityStatement, every transaction
    assert LEARNED.refused(base) == MEDPLUM_LIMITS

    LEARNED.forget()  # a new process: what the refusal taught is kept in the database
    sent.clear()
    world_edit(world, plan_id, lambda p: setattr(p.goals[1], "status_reason", "reviewed"))
    assert sync.push(plan_id).status == "in_sync"
    assert sent and all(n <= 8 for n in sent)  # split from the start: nothing refused

    sent.clear()
    refuse_everything = True
    world_edit(world, plan_id, lambda p: setattr(p.goals[0], "status_reason", "knee swelling"))
    with pytest.raises(FhirTransactionTooLarge) as refused:
        sync.push(plan_id)
    assert refused.value.decision == "stop"
    assert len(sent) == 1  # split from the start (the caps are known), refused: no retry
    assert "FhirTransactionTooLarge" in (sync.status(plan_id).last_error or "")
