"""The loop closed on real traffic: an EHR edit on the FHIR server reaches a subscribed team system as a
signed webhook within seconds (FHIR Subscription -> planbridge -> pull -> delivery)."""

import json
import threading
import time
import uuid
from dataclasses import replace

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.notify.worker import DeliveryWorker
from service.store.uow import UnitOfWork
from service.sync import subscriptions
from tests.integration.test_notify import Receiver
from tests.live import Live
from tests.support import goal_event

KEY = "loop-key-0123456789abcdef"
NOTIFY = "loop-notify-secret-0123456789"


@pytest.fixture
def running(engine, fhir_base_url):
    live = Live(
        engine,
        fhir_base_url,
        api_keys=(KEY,),
        fhir_notify_secret=NOTIFY,
        outbound_allow=("127.0.0.0/8",),
        worker_poll_seconds=0.05,
    )
    live.settings = replace(live.settings, public_url=live.url)
    stop = threading.Event()
    deliveries = DeliveryWorker(UnitOfWork(engine), live.settings, utcnow)
    threads = [
        threading.Thread(target=live.worker.run_forever, args=(stop,), daemon=True),
        threading.Thread(target=deliveries.run_forever, args=(stop,), daemon=True),
    ]
    for t in threads:
        t.start()
    held = subscriptions.subscribe(live.fhir, live.settings)
    yield live
    stop.set()
    for t in threads:
        t.join(timeout=10)
    for s in held:
        live.fhir.request("DELETE", f"Subscription/{s['id']}")
    live.close()


def wait_for(predicate, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_an_ehr_edit_reaches_a_subscribed_team_system_signed_and_in_order(running, fhir_base_url):
    receiver = Receiver()
    try:
        sub = requests.post(
            f"{running.url}/subscriptions",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
            json={"url": receiver.url, "event_types": ["*"]},
        )
        assert sub.status_code == 201, sub.text
        secret = sub.json()["secret"]
        event = goal_event(plan_id=f"plan-{uuid.uuid4().hex[:8]}")
        plan_id = event["data"]["plan_id"]
        assert running.post(event).status_code == 202
        goal = wait_for(
            lambda: FhirClient(fhir_base_url).find_one(
                "Goal", {"identifier": f"{running.settings.identifier_base}/goal|{plan_id}/goal-walk"}
            )
        )
        started = time.monotonic()
        FhirClient(fhir_base_url).request("PUT", f"Goal/{goal['id']}", json={**goal, "lifecycleStatus": "on-hold"})

        def ehr_event():
            for headers, body in list(receiver.received):
                payload = json.loads(body)
                if payload["type"] == "ehr.plan_changed":
                    return headers, body, payload
            return None

        headers, body, payload = wait_for(ehr_event, 30)
        elapsed = time.monotonic() - started
        Webhook(secret).verify(body, headers)  # signed with the subscription's own secret
        assert payload["data"]["plan_id"] == plan_id and payload["data"]["source"] == "ehr"
        assert "goals[id=goal-walk].lifecycle_status" in payload["data"]["change"]["paths"]
        sequences = [json.loads(b)["data"]["sequence"] for _, b in receiver.received]
        assert sequences == sorted(sequences) and sequences[0] == 1  # the team event first, then the EHR change
        team = json.loads(receiver.received[0][1])
        assert team["type"] == "goal.proposed" and team["data"]["change"]["sender"] == "default"
        assert elapsed < 15  # seconds, not the next nightly sync (generous: CI machines are shared)
    finally:
        receiver.stop()


def test_the_demo_tells_the_whole_story(running, fhir_base_url):
    from service.demo import run_demo
    from tests.support import SECRET

    lines: list[str] = []
    run_demo(running.url, fhir_base_url, SECRET, KEY, running.settings.identifier_base, lines.append)
    story = "\n".join(lines)
    assert "agreements: Sam Example: agree, Owen Hughes: agree, Dr Ana Ruiz: agree; check-ins: 1" in story
    assert "outcome ratings: 2" in story  # the GBO ratings at baseline and review, Observations on the server
    assert "/outcomes: goal-walk GBO 3 -> 6 (+3: a reliable change, threshold 2.45)" in story
    assert "received ehr.plan_changed" in story and "signature verified" in story
    assert "goals[id=goal-walk].lifecycle_status" in story
    # the demo's listener is gone with it: its subscription goes too, or every later delivery would fail
    left = requests.get(f"{running.url}/subscriptions", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert left.status_code == 200
    assert [s for s in left.json() if s.get("description") == "demo team system"] == []
    assert "subscription" in lines[-1] and "removed" in lines[-1]
