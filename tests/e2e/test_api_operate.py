"""The reading and operating API over real HTTP: API keys, plans, sync, conflicts, outbox, docs, metrics."""

import json
import re
import threading

import pytest
import requests
from openapi_spec_validator import validate as validate_openapi
from werkzeug.serving import make_server

from mappings.fhir import validate_bundle
from service.api.app import create_app
from service.api.container import utcnow
from service.domain import codec
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.worker import OutboxWorker
from tests.support import goal_event, settings, signed

KEY = "test-key-0123456789abcdef"


class Api:
    def __init__(self, engine, fhir_base_url: str, keys: tuple[str, ...] = (KEY,), **overrides) -> None:
        self.engine = engine
        self.settings = settings(fhir_base_url=fhir_base_url, api_keys=keys, **overrides)
        self.server = make_server("127.0.0.1", 0, create_app(self.settings, engine), threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.worker = OutboxWorker(
            UnitOfWork(engine), FhirClient(fhir_base_url, timeout=5, max_retries=0), self.settings, utcnow
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def get(self, path: str, key: str | None = KEY, **kw) -> requests.Response:
        return requests.get(
            self.url + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=10, **kw
        )

    def post(self, path: str, body=None, key: str | None = KEY) -> requests.Response:
        return requests.post(self.url + path, json=body, headers={"X-API-Key": key} if key else {}, timeout=10)

    def event(self, event: dict) -> requests.Response:
        raw = json.dumps(event).encode()
        return requests.post(f"{self.url}/webhooks/team", data=raw, headers=signed(raw), timeout=10)


@pytest.fixture
def api(engine, fhir_base_url):
    service = Api(engine, fhir_base_url)
    yield service
    service.server.shutdown()


def test_operating_endpoints_need_a_valid_key(api):
    for path in ("/plans/x", "/plans/x/sync", "/conflicts", "/outbox"):
        refused = api.get(path, key=None)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert refused.json()["type"] == "urn:planbridge:problem:unauthorized"
        assert api.get(path, key=KEY[:-1] + "X").status_code == 401
    assert api.get("/plans/x").status_code == 404  # the key opens the door; the plan is not there
    assert api.get("/healthz", key=None).status_code == 200


def test_without_configured_keys_the_operating_api_is_off(engine, fhir_base_url):
    off = Api(engine, fhir_base_url, keys=())
    try:
        answer = off.get("/outbox")
        assert answer.status_code == 401 and "PLANBRIDGE_API_KEYS" in answer.json()["detail"]
    finally:
        off.server.shutdown()


def test_a_plan_reads_back_as_json_as_fhir_and_with_its_sync_state(api):
    event = goal_event()
    plan_id = event["data"]["plan_id"]
    assert api.event(event).status_code == 202
    plan = api.get(f"/plans/{plan_id}").json()
    assert plan["goals"][0]["description"]["text"] == event["data"]["goal"]["description"]
    bundle = api.get(f"/plans/{plan_id}/fhir")
    assert bundle.headers["Content-Type"].startswith("application/fhir+json")
    validate_bundle(bundle.json())
    assert api.get(f"/plans/{plan_id}/sync").json()["status"] == "pending"
    api.worker.run_until_idle()
    state = api.get(f"/plans/{plan_id}/sync").json()
    assert state["status"] == "in_sync"
    assert {r["type"] for r in state["resources"]} >= {"CarePlan", "Goal", "Patient"}
    queued = api.post(f"/plans/{plan_id}/sync", {"direction": "push"})
    assert queued.status_code == 202 and queued.json()["queued"] == "push"
    assert api.get(f"/plans/{plan_id}/sync").json()["status"] == "in_sync"  # queued, but nothing new to push
    note = {
        "type": "note.added",
        "timestamp": event["timestamp"],
        "data": {"plan_id": plan_id, "text": "Going well", "author": "patient"},
    }
    assert api.event(note).status_code == 202
    assert api.get(f"/plans/{plan_id}/sync").json()["status"] == "pending"  # changed since the push
    api.worker.run_until_idle()
    assert api.get(f"/plans/{plan_id}/sync").json()["status"] == "in_sync"
    pulled = api.post(f"/plans/{plan_id}/sync", {"direction": "pull"})
    assert pulled.status_code == 200 and pulled.json()["outcome"] == "unchanged"
    bad = api.post(f"/plans/{plan_id}/sync", {"direction": "sideways"})
    assert bad.status_code == 400 and "direction" in bad.json()["errors"]


def test_conflicts_are_listed_and_resolved_through_the_api(api, fhir_base_url):
    event = goal_event()
    plan_id = event["data"]["plan_id"]
    api.event(event)
    api.worker.run_until_idle()
    ehr = FhirClient(fhir_base_url)
    goal = ehr.find_one("Goal", {"identifier": f"{api.settings.identifier_base}/goal|{plan_id}/goal-walk"})
    ehr.request("PUT", f"Goal/{goal['id']}", json={**goal, "statusReason": "EHR"})
    with UnitOfWork(api.engine) as uow:
        plan = uow.plans.get(plan_id)
        plan.goals[0].status_reason = "team"
        plan.touch(utcnow().isoformat())
        uow.plans.save(plan)
        uow.outbox.add(plan_id, "push_plan", None, None, utcnow())
        uow.commit()
    api.worker.run_until_idle()
    (conflict,) = api.get("/conflicts", params={"plan": plan_id}).json()
    assert (conflict["ours"], conflict["theirs"]) == ("team", "EHR")
    assert api.post(f"/conflicts/{conflict['id']}/resolve", {}).status_code == 400
    resolved = api.post(f"/conflicts/{conflict['id']}/resolve", {"value": "agreed"})
    assert resolved.status_code == 200 and resolved.json()["resolution"] == "value"
    assert api.post(f"/conflicts/{conflict['id']}/resolve", {"take": "ours"}).status_code == 409
    assert api.get("/conflicts", params={"status": "bogus"}).status_code == 400
    first = api.get("/conflicts", params={"status": "all", "limit": 1})
    assert len(first.json()) == 1 and "Link" not in first.headers  # the only conflict: no next page
    api.worker.run_until_idle()
    assert ehr.read("Goal", goal["id"])["statusReason"] == "agreed"


def test_a_dead_outbox_entry_is_visible_and_replayable(engine, fhir_base_url):
    down = Api(engine, "http://127.0.0.1:9/baseR4", outbox_max_attempts=1)  # nothing listens on port 9
    try:
        down.event(goal_event())
        down.worker.run_until_idle()
        (dead,) = down.get("/outbox", params={"status": "dead"}).json()
        assert dead["attempts"] == 1 and "FhirTransportError" in dead["last_error"]
        assert dead["claimed_at"] is None  # no worker holds it
        replayed = down.post(f"/outbox/{dead['id']}/replay")
        assert replayed.status_code == 200 and (replayed.json()["status"], replayed.json()["attempts"]) == (
            "pending",
            0,
        )
        again = down.post(f"/outbox/{dead['id']}/replay")
        assert again.status_code == 422
        assert down.post("/outbox/999999/replay").status_code == 404
    finally:
        down.server.shutdown()


def test_conflicts_are_listed_a_page_at_a_time(api):
    with UnitOfWork(api.engine) as uow:
        for n in range(3):
            uow.sync.add_conflict("plan-c", f"goals[{n}].status_reason", "base", "ours", "theirs", utcnow())
        uow.commit()
    first = api.get("/conflicts", params={"plan": "plan-c", "limit": 2})
    assert [c["path"] for c in first.json()] == ["goals[0].status_reason", "goals[1].status_reason"]
    rest = api.get(first.links["next"]["url"].removeprefix(api.url))
    assert [c["path"] for c in rest.json()] == ["goals[2].status_reason"] and "Link" not in rest.headers
    assert api.get("/conflicts", params={"limit": "x"}).status_code == 400


def test_the_outbox_is_listed_a_page_at_a_time(api):
    with UnitOfWork(api.engine) as uow:
        for n in range(5):
            uow.outbox.add(f"plan-page-{n}", "push_plan", None, None, utcnow())
        uow.commit()
    seen, path, pages = [], "/outbox?status=pending&limit=2", 0
    while path:
        answer = api.get(path)
        assert answer.status_code == 200 and len(answer.json()) <= 2
        seen += [e["plan_id"] for e in answer.json()]
        pages += 1
        path = answer.links.get("next", {}).get("url", "").removeprefix(api.url) or None
        assert path is None or ("status=pending" in path and "limit=2" in path)  # filters carried over
    assert (seen, pages) == ([f"plan-page-{n}" for n in range(5)], 3)
    assert "Link" not in api.get("/outbox?limit=5").headers  # the whole list fits: no next page
    assert [e["plan_id"] for e in api.get("/outbox", params={"plan": "plan-page-3"}).json()] == ["plan-page-3"]
    for query, field in (
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=-1", "after"),
        ("status=gone", "status"),
    ):
        bad = api.get(f"/outbox?{query}")
        assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/problem+json"
        assert field in bad.json()["errors"]


def test_openapi_document_is_valid_and_lists_every_route(api):
    document = api.get("/openapi.json", key=None).json()
    validate_openapi(document)
    app = create_app(api.settings, api.engine)
    routes = {
        r.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
        for r in app.url_map.iter_rules()
        if r.endpoint != "static"
        and r.rule not in ("/openapi.json", "/docs", "/favicon.ico")
        and not r.rule.startswith("/console/")
    }
    assert routes == set(document["paths"])
    page = api.get("/docs", key=None)
    assert page.status_code == 200 and "goal.proposed" in page.text and "<script" not in page.text


def test_metrics_count_events_and_the_outbox(api):
    api.event(goal_event())
    text = api.get("/metrics", key=None).text
    assert 'planbridge_events{status="202",type="goal.proposed"} 1.0' in text
    assert 'planbridge_events_by_sender{sender="default",status="202"} 1.0' in text
    assert 'planbridge_outbox_entries{status="pending"} 1.0' in text
    assert "planbridge_sync_lag_seconds" in text
    api.worker.run_until_idle()
    synced = api.get("/metrics", key=None).text
    assert "planbridge_sync_lag_seconds 0.0" in synced and 'planbridge_plans{status="in_sync"} 1.0' in synced
    assert "planbridge_http_requests_total" in text
    # One event, one commit that carried it (on SQLite, concurrent events share commits).
    assert re.search(r'planbridge_event_commits_total\{pid="\d+"\} 1\.0', text)
    assert re.search(r'planbridge_event_commit_works_total\{pid="\d+"\} 1\.0', text)


def test_readiness_names_what_is_down(engine, fhir_base_url, api):
    assert api.get("/readyz", key=None).json() == {"status": "ready", "database": "ok", "fhir": "ok"}
    down = Api(engine, "http://127.0.0.1:9/baseR4")
    try:
        answer = down.get("/readyz", key=None)
        assert answer.status_code == 503 and answer.json()["fhir"] == "FhirTransportError"
    finally:
        down.server.shutdown()


def test_plan_json_from_the_api_is_the_codec_format(api):
    event = goal_event()
    api.event(event)
    with UnitOfWork(api.engine) as uow:
        stored = codec.to_dict(uow.plans.get(event["data"]["plan_id"]))
    assert api.get(f"/plans/{event['data']['plan_id']}").json() == json.loads(json.dumps(stored))


def test_every_answer_carries_a_request_id(api):
    assert len(api.get("/healthz", key=None).headers["X-Request-ID"]) == 32
    echoed = requests.get(f"{api.url}/healthz", headers={"X-Request-ID": "from-the-engine-42"}, timeout=10)
    assert echoed.headers["X-Request-ID"] == "from-the-engine-42"
