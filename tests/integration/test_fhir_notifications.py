"""Notifications from the FHIR server: they only ever queue a re-read, never change a plan by themselves."""

import json
import uuid
from datetime import timedelta

import pytest
import requests

from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.notifications import receive_backport, receive_ping, receive_resource
from service.sync.worker import OutboxWorker
from tests.live import Live
from tests.support import goal_event

SECRET = "notify-secret-0123456789"
HEADERS = {"X-Planbridge-Notify-Secret": SECRET, "Content-Type": "application/fhir+json"}


def queued(engine) -> list[tuple[str, str]]:
    with UnitOfWork(engine) as uow:
        return [(e.kind, e.plan_id) for e in uow.outbox.list(status="pending") if e.kind.startswith("pull")]


def status_bundle(kind: str, events: list[tuple[int, dict | None]], total: int | None = None) -> dict:
    params = [
        {"name": "subscription", "valueReference": {"reference": "Subscription/s1"}},
        {"name": "topic", "valueCanonical": "http://example.org/topic/goal-changes"},
        {"name": "type", "valueCode": kind},
    ]
    if total is not None:
        params.append({"name": "events-since-subscription-start", "valueString": str(total)})
    entries = []
    for number, resource in events:
        part = [{"name": "event-number", "valueString": str(number)}]
        if resource is not None:
            part.append({"name": "focus", "valueReference": {"reference": f"Goal/{resource['id']}"}})
            entries.append({"fullUrl": f"http://ehr/Goal/{resource['id']}", "resource": resource})
        params.append({"name": "notification-event", "part": part})
    status = {"resourceType": "Parameters", "parameter": params}
    return {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}, *entries]}


def our_goal(base: str, plan_id: str, version: str = "2") -> dict:
    return {
        "resourceType": "Goal",
        "id": "77",
        "meta": {"versionId": version},
        "identifier": [{"system": f"{base}/goal", "value": f"{plan_id}/g1"}],
    }


BASE = "https://planbridge.test/notify/id"


def test_a_ping_queues_one_pull_of_what_changed(engine):
    receive_ping(UnitOfWork(engine), utcnow())
    receive_ping(UnitOfWork(engine), utcnow())  # a second ping while one is waiting adds nothing
    assert queued(engine) == [("pull_changed", "*")]


def test_a_resource_queues_its_plan_unless_it_is_the_version_we_already_know(engine):
    with UnitOfWork(engine) as uow:
        uow.links.record("plan-a", "goal:g1", "Goal", "77", "2", utcnow())
        uow.commit()
    assert receive_resource(UnitOfWork(engine), our_goal(BASE, "plan-a", "2"), BASE, utcnow()).queued == []
    assert receive_resource(UnitOfWork(engine), our_goal(BASE, "plan-a", "3"), BASE, utcnow()).queued == ["plan-a"]
    ehr_goal = {"resourceType": "Goal", "id": "9", "meta": {"versionId": "1"}}
    assert receive_resource(UnitOfWork(engine), ehr_goal, BASE, utcnow()).queued == ["*"]
    assert queued(engine) == [("pull_plan", "plan-a"), ("pull_changed", "*")]


def test_backport_handshake_events_and_a_gap(engine):
    assert receive_backport(UnitOfWork(engine), status_bundle("handshake", [], total=0), BASE, utcnow()).queued == []
    first = receive_backport(
        UnitOfWork(engine), status_bundle("event-notification", [(1, our_goal(BASE, "plan-b"))]), BASE, utcnow()
    )
    assert first.queued == ["plan-b"]
    heartbeat = receive_backport(UnitOfWork(engine), status_bundle("heartbeat", [], total=1), BASE, utcnow())
    assert heartbeat.queued == []  # nothing missed
    gap = receive_backport(UnitOfWork(engine), status_bundle("event-notification", [(4, None)]), BASE, utcnow())
    assert "*" in gap.queued  # events 2 and 3 never came: resync
    behind = receive_backport(UnitOfWork(engine), status_bundle("heartbeat", [], total=6), BASE, utcnow())
    assert behind.queued == ["*"]  # the server says 6 happened; we saw 4


@pytest.fixture
def live(engine, fhir_base_url):
    service = Live(engine, fhir_base_url, fhir_notify_secret=SECRET)
    yield service
    service.close()


def test_unauthenticated_notifications_are_refused_and_change_nothing(live):
    for headers in ({}, {"X-Planbridge-Notify-Secret": "wrong"}):
        answer = requests.post(f"{live.url}/fhir-notifications", headers=headers, timeout=10)
        assert answer.status_code == 401
        assert answer.json()["resourceType"] == "OperationOutcome"
    assert queued(live.engine) == []


def test_malformed_notifications_get_an_operation_outcome(live):
    bad_type = requests.put(
        f"{live.url}/fhir-notifications/Goal/1",
        data=json.dumps({"resourceType": "CarePlan"}),
        headers=HEADERS,
        timeout=10,
    )
    assert bad_type.status_code == 400 and bad_type.json()["issue"][0]["code"] == "invalid"
    not_json = requests.post(f"{live.url}/fhir-notifications", data=b"{oops", headers=HEADERS, timeout=10)
    assert not_json.status_code == 400
    no_status = requests.post(
        f"{live.url}/fhir-notifications",
        headers=HEADERS,
        timeout=10,
        data=json.dumps({"resourceType": "Bundle", "type": "history", "entry": []}),
    )
    assert no_status.status_code == 400
    assert queued(live.engine) == []


def pushed_goal(live: Live, fhir_base_url: str) -> tuple[str, FhirClient, dict]:
    """Propose a goal in a new plan, push it, and return the plan id, a client of the EHR's server and the Goal."""
    event = goal_event(plan_id=f"plan-{uuid.uuid4().hex[:8]}")
    plan_id = event["data"]["plan_id"]
    assert live.post(event).status_code == 202
    live.worker.run_until_idle()
    ehr = FhirClient(fhir_base_url)
    goal = ehr.find_one("Goal", {"identifier": f"{live.settings.identifier_base}/goal|{plan_id}/goal-walk"})
    return plan_id, ehr, goal


def test_an_ehr_edit_notified_by_rest_hook_reaches_the_plan(live, fhir_base_url):
    plan_id, ehr, goal = pushed_goal(live, fhir_base_url)
    changed = ehr.request("PUT", f"Goal/{goal['id']}", json={**goal, "lifecycleStatus": "on-hold"}).json()
    # The notification carries the new version (a forged body could only ever queue a re-read).
    forged = {**changed, "lifecycleStatus": "cancelled"}
    answer = requests.put(
        f"{live.url}/fhir-notifications/Goal/{goal['id']}", data=json.dumps(forged), headers=HEADERS, timeout=10
    )
    assert answer.status_code == 200
    assert queued(live.engine) == [("pull_plan", plan_id)]
    live.worker.run_until_idle()
    with UnitOfWork(live.engine) as uow:
        assert uow.plans.get(plan_id).goals[0].lifecycle_status == "on-hold"  # what the server holds, not the body
    assert queued(live.engine) == []


def test_a_subscription_on_the_fhir_server_brings_an_ehr_edit_into_the_plan(live, fhir_base_url):
    """Real traffic: planbridge subscribes, the EHR edits a Goal, the server notifies, the worker pulls."""
    import time
    from dataclasses import replace

    from service.sync import subscriptions

    settings = replace(live.settings, public_url=live.url)
    held = subscriptions.subscribe(live.fhir, settings)
    try:
        assert {s["criteria"].split("?")[0] for s in held} == {"CarePlan", "Goal", "CareTeam"}
        event = goal_event(plan_id=f"plan-{uuid.uuid4().hex[:8]}")
        plan_id = event["data"]["plan_id"]
        live.post(event)
        live.worker.run_until_idle()  # our push: its echoes are recognised and queue nothing lasting
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and queued(live.engine):
            live.worker.run_until_idle()
            time.sleep(0.1)
        ehr = FhirClient(fhir_base_url)
        goal = ehr.find_one("Goal", {"identifier": f"{settings.identifier_base}/goal|{plan_id}/goal-walk"})
        ehr.request("PUT", f"Goal/{goal['id']}", json={**goal, "lifecycleStatus": "on-hold"})
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline and status != "on-hold":
            live.worker.run_until_idle()
            with UnitOfWork(live.engine) as uow:
                status = uow.plans.get(plan_id).goals[0].lifecycle_status
            time.sleep(0.1)
        assert status == "on-hold"
        assert [s["status"] for s in subscriptions.status(live.fhir, settings)] == ["active"] * 3
        again = subscriptions.subscribe(live.fhir, settings)  # a second run updates, never duplicates
        assert sorted(s["id"] for s in again) == sorted(s["id"] for s in held)
    finally:
        for s in held:
            live.fhir.request("DELETE", f"Subscription/{s['id']}")


def test_a_backport_subscription_that_falls_silent_forces_a_resync(engine):
    from datetime import timedelta

    from service.sync.notifications import silent_subscriptions

    start = utcnow()
    receive_backport(UnitOfWork(engine), status_bundle("heartbeat", [], total=0), BASE, start)
    assert silent_subscriptions(UnitOfWork(engine), start + timedelta(seconds=59), 60) == []
    assert queued(engine) == []
    assert silent_subscriptions(UnitOfWork(engine), start + timedelta(seconds=61), 60) == ["Subscription/s1"]
    assert queued(engine) == [("pull_changed", "*")]
    # counted as heard now: one resync per silent period, not one per poll
    assert silent_subscriptions(UnitOfWork(engine), start + timedelta(seconds=62), 60) == []


class EditedWhileRead(FhirClient):
    """The FHIR server as the worker meets it when a clinician saves again just after its first read."""

    def __init__(self, base_url: str, edit) -> None:
        super().__init__(base_url, timeout=10)
        self.edit = edit

    def request(self, method: str, path: str, **kwargs):
        answer = super().request(method, path, **kwargs)
        if method == "GET" and self.edit is not None:
            edit, self.edit = self.edit, None
            edit()
        return answer


def test_an_edit_notified_while_its_plan_is_being_read_is_read_again(live, fhir_base_url):
    # The re-read under way may have fetched the server's state before this edit: the notification
    # must queue a new re-read, not be taken as covered by the one in flight (found by test_loop).
    plan_id, ehr, goal = pushed_goal(live, fhir_base_url)
    first = ehr.request("PUT", f"Goal/{goal['id']}", json={**goal, "lifecycleStatus": "on-hold"}).json()
    assert receive_resource(UnitOfWork(live.engine), first, live.settings.identifier_base, utcnow()).queued

    def second_edit() -> None:
        second = ehr.request("PUT", f"Goal/{goal['id']}", json={**first, "lifecycleStatus": "cancelled"}).json()
        receive_resource(UnitOfWork(live.engine), second, live.settings.identifier_base, utcnow())

    worker = OutboxWorker(UnitOfWork(live.engine), EditedWhileRead(fhir_base_url, second_edit), live.settings, utcnow)
    assert worker.process_one()  # the re-read of the first edit, during which the second is saved
    assert queued(live.engine) == [("pull_plan", plan_id)]
    worker.run_until_idle()
    with UnitOfWork(live.engine) as uow:
        assert uow.plans.get(plan_id).goals[0].lifecycle_status == "cancelled"
    assert queued(live.engine) == []


def test_a_notification_joins_a_re_read_still_waiting_or_retrying(engine):
    with UnitOfWork(engine) as uow:
        uow.links.record("plan-b", "goal:g1", "Goal", "77", "2", utcnow())
        uow.commit()
    receive_resource(UnitOfWork(engine), our_goal(BASE, "plan-b", "3"), BASE, utcnow())
    receive_resource(UnitOfWork(engine), our_goal(BASE, "plan-b", "4"), BASE, utcnow())
    assert queued(engine) == [("pull_plan", "plan-b")]  # not yet started: one re-read reads both
    with UnitOfWork(engine) as uow:
        row = uow.outbox.claim_next(utcnow())
        uow.outbox.lease(row, utcnow(), 60)
        uow.commit()
    with UnitOfWork(engine) as uow:
        assert uow.outbox.get(row.id).claimed_at is not None
    receive_resource(UnitOfWork(engine), our_goal(BASE, "plan-b", "5"), BASE, utcnow())
    assert queued(engine) == [("pull_plan", "plan-b")] * 2  # the first is under way: a second is queued
    with UnitOfWork(engine) as uow:
        first = uow.outbox.get(row.id)
        uow.outbox.mark_failed(first, "FhirUnavailable: down", utcnow(), 5, timedelta(seconds=30))
        uow.commit()
    with UnitOfWork(engine) as uow:
        assert uow.outbox.get(row.id).claimed_at is None  # waiting for its retry, no longer under way
