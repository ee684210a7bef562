"""Refusals that are not version conflicts stop, are recorded, and back off: no retry storm.

A conditional update that matches several resources (HAPI answers 412) used to be taken for a version
conflict: pull, "merged", a new push queued, 412 again, thousands of transactions a minute and no error
recorded. It is a data problem that retrying never fixes.
"""

import json
import uuid
from datetime import timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from service.api.metrics import StoreCollector
from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine, sync_status
from service.sync.worker import OutboxWorker
from tests.support import FIXTURES, Clock, settings


def test_a_conditional_update_matching_several_resources_is_recorded_and_backs_off(
    engine, fhir_profile, fhir_profile_url
):
    config = settings(fhir_base_url=fhir_profile_url)
    clock = Clock()
    client = FhirClient(fhir_profile_url, timeout=10, sleep=lambda _s: None)
    worker = OutboxWorker(UnitOfWork(engine), client, config, clock)
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text()))
    plan.id = f"plan-dup-{uuid.uuid4().hex[:6]}"
    plan.patient.mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    goal = plan.goals[0]
    # The EHR (or a server's concurrency bug) holds two Goals with the identifier of one of ours.
    ehr = FhirClient(fhir_profile_url, timeout=10)
    for _ in range(2):
        ehr.request(
            "POST",
            "Goal",
            json={
                "resourceType": "Goal",
                "identifier": [{"system": f"{config.identifier_base}/goal", "value": f"{plan.id}/{goal.id}"}],
                "lifecycleStatus": "active",
                "description": {"text": "a copy"},
                "subject": {"display": "someone"},
            },
        )
    with UnitOfWork(engine) as uow:  # the plan, and six team events' pushes queued behind each other
        plan.touch(clock().isoformat())
        uow.plans.save(plan)
        for _ in range(6):
            uow.outbox.add(plan.id, "push_plan", None, None, clock())
        uow.commit()

    windows = []
    for _ in range(4):  # four backoff windows: in each, one attempt at most
        before = client.requests_sent
        worker.run_until_idle()
        windows.append(client.requests_sent - before)
        clock.now += timedelta(minutes=20)  # past any backoff so far (capped at 15 minutes)
    # One attempt a window. The first: the Patient lookup, the CapabilityStatement (read once: the Bundle has
    # 13 entries), then on hapi the one transaction, refused; on medplum (8 entries once any is conditional) the
    # Patient, people and CareTeam land in a first transaction and the goals' is refused. Later attempts: on hapi
    # the lookup again (no Patient was created) and the transaction; on medplum one transaction, refused (the
    # Patient and team are known: what remains starts with the duplicated Goal's).
    assert windows == {"hapi": [3, 2, 2, 2], "medplum": [4, 1, 1, 1]}[fhir_profile], windows

    status = sync_status(UnitOfWork(engine), plan.id)
    assert status.status == "failed"
    assert status.last_error.startswith("FhirMultipleMatches: POST [base] (transaction) failed")
    assert status.last_outcome["resourceType"] == "OperationOutcome"
    with UnitOfWork(engine) as uow:
        entries = uow.outbox.list(plan.id)
    assert sorted(e.attempts for e in entries) == [0, 0, 0, 0, 0, 4]  # the others wait behind it
    assert all(e.status == "pending" for e in entries)
    # nothing was written to them: the two copies are untouched and no third one appeared
    copies = ehr.search("Goal", {"identifier": f"{config.identifier_base}/goal|{plan.id}/{goal.id}"})
    assert [c["meta"]["versionId"] for c in copies] == ["1", "1"]

    registry = CollectorRegistry()
    registry.register(StoreCollector(engine))
    assert 'planbridge_plans_failed{reason="FhirMultipleMatches"} 1.0' in generate_latest(registry).decode()


def _world(engine, fhir_base_url):
    config = settings(fhir_base_url=fhir_base_url)
    client = FhirClient(fhir_base_url, timeout=10, sleep=lambda _s: None)
    sync = SyncEngine(UnitOfWork(engine), client, config, Clock())
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text()))
    plan.id = f"plan-del-{uuid.uuid4().hex[:6]}"
    plan.patient.mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    with UnitOfWork(engine) as uow:
        plan.touch("2026-11-22T10:00:00+00:00")
        uow.plans.save(plan)
        uow.subscriptions.add("https://team.example.org/hook", ["*"], "whsec_x", None, Clock()())
        uow.commit()
    assert sync.push(plan.id).status == "in_sync"
    return config, client, sync, plan


def _team_changes_goal(engine, plan_id: str, goal_id: str, reason: str) -> None:
    with UnitOfWork(engine) as uow:
        plan = uow.plans.get(plan_id)
        plan.goal(goal_id).status_reason = reason
        plan.touch("2026-11-22T11:00:00+00:00")
        uow.plans.save(plan)
        uow.commit()


@pytest.mark.parametrize("take", ["ours", "theirs"])
def test_a_push_to_a_goal_the_ehr_deleted_becomes_a_conflict_the_team_hears_of(engine, fhir_base_url, take):
    config, client, sync, plan = _world(engine, fhir_base_url)
    goal = plan.goals[0]
    identifier = {"identifier": f"{config.identifier_base}/goal|{plan.id}/{goal.id}"}
    ehr = FhirClient(fhir_base_url, timeout=10)
    (on_server,) = ehr.search("Goal", identifier)
    _team_changes_goal(engine, plan.id, goal.id, "the team's change")
    ehr.request("DELETE", f"Goal/{on_server['id']}")

    before = client.requests_sent
    result = sync.push(plan.id)  # PUT Goal/id with If-Match: 404 -> read -> conflict, and no loop
    assert result.status == "conflicted" and client.requests_sent - before <= 6
    (conflict,) = sync.status(plan.id).conflicts
    assert conflict["path"] == f"goals[id={goal.id}]" and conflict["theirs"] is None
    assert conflict["ours"]["status_reason"] == "the team's change"
    assert ehr.search("Goal", identifier) == []  # not brought back behind the EHR's back
    assert sync.push(plan.id).requests == 0  # and nothing more to send while it is open
    with UnitOfWork(engine) as uow:  # the team's systems hear of the conflict
        (heard,) = [
            d.payload for d in uow.deliveries.for_plan(plan.id, 50)[0] if d.payload["data"]["change"].get("conflicts")
        ]
    assert heard["data"]["change"]["conflicts"] == [f"goals[id={goal.id}]"]

    sync.resolve(conflict["id"], take)
    assert sync.push(plan.id).status == "in_sync"
    found = ehr.search("Goal", identifier)
    if take == "ours":  # the team keeps its goal: it is written again (a new resource), once
        assert [g["statusReason"] for g in found] == ["the team's change"]
        assert found[0]["id"] != on_server["id"]
    else:  # the team accepts the deletion: the goal stays in the plan, marked, and is not written again
        assert found == [] and sync.status(plan.id).status == "in_sync"
        with UnitOfWork(engine) as uow:
            kept = uow.plans.get(plan.id).goal(goal.id)
        assert kept.removed_in_ehr is not None and kept.lifecycle_status == "entered-in-error"
