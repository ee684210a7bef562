"""A signed team event posted over HTTP to the running app becomes a Goal on a real FHIR server."""

import json
import uuid

import pytest
import requests

from service.api.container import utcnow
from service.store.uow import UnitOfWork
from tests.live import Live
from tests.support import MRN_SYSTEM, SECRET, goal_event, signed


class LiveService(Live):
    """The app over real HTTP, with what these tests look at: the Goal on the server, and every table."""

    def goals_on_server(self, event: dict) -> list[dict]:
        value = f"{event['data']['plan_id']}/{event['data']['goal']['id']}"
        return self.fhir.search("Goal", {"identifier": f"{self.settings.identifier_base}/goal|{value}"})

    def row_counts(self) -> dict[str, int]:
        return {t.name: self.count(t) for t in self.tables()}


@pytest.fixture
def live(engine, fhir_base_url):
    service = LiveService(engine, fhir_base_url)
    yield service
    service.server.shutdown()


def test_a_signed_goal_proposal_becomes_a_fhir_goal(live):
    event = goal_event()
    answer = live.post(event)
    assert answer.status_code == 202, answer.text
    assert answer.json()["plan_version"] == 1
    assert live.worker.run_until_idle() == 1

    (goal,) = live.goals_on_server(event)
    assert goal["lifecycleStatus"] == "proposed"
    assert goal["description"]["text"] == event["data"]["goal"]["description"]
    assert goal["target"][0]["detailQuantity"]["value"] == 4000
    patient = live.fhir.read("Patient", goal["subject"]["reference"].split("/")[1])
    assert {"system": MRN_SYSTEM, "value": event["data"]["patient"]["mrn"]} in patient["identifier"]
    with UnitOfWork(live.engine) as uow:
        (entry,) = uow.outbox.list()
        assert entry.status == "done"
        link = uow.links.get(event["data"]["plan_id"], "goal:goal-walk")
        assert (link.fhir_id, link.version_id) == (goal["id"], goal["meta"]["versionId"])


def test_the_same_event_twice_leaves_one_goal(live):
    event = goal_event()
    body_id = f"msg_{uuid.uuid4().hex}"
    first = live.post(event, msg_id=body_id)
    second = live.post(event, msg_id=body_id)
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    live.worker.run_until_idle()
    assert len(live.goals_on_server(event)) == 1


def test_a_repeated_push_updates_the_same_goal(live):
    event = goal_event()
    live.post(event)
    live.worker.run_until_idle()
    with UnitOfWork(live.engine) as uow:
        uow.outbox.add(event["data"]["plan_id"], "push_goal", "goal-walk", None, utcnow())
        uow.commit()
    live.worker.run_until_idle()
    (goal,) = live.goals_on_server(event)
    assert goal["meta"]["versionId"] != "0"
    with UnitOfWork(live.engine) as uow:
        assert [e.status for e in uow.outbox.list()] == ["done", "done"]


def test_an_unsigned_request_is_refused_and_stores_nothing(live):
    body = json.dumps(goal_event()).encode()
    answer = requests.post(
        f"{live.url}/webhooks/team", data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert answer.status_code == 401
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:planbridge:problem:signature-invalid"
    assert set(live.row_counts().values()) == {0}


def test_a_request_signed_with_another_secret_is_refused(live):
    from service.signing import new_secret

    assert live.post(goal_event(), secret=new_secret()).status_code == 401
    assert set(live.row_counts().values()) == {0}


def test_each_sender_signs_with_its_own_secrets_and_owns_its_webhook_ids(engine, fhir_base_url):
    from service.signing import new_secret
    from service.store.tables import InboundEventRow

    diet_old, diet_new, ehr = new_secret(), new_secret(), new_secret()
    senders = (("dietetics", (diet_new, diet_old)), ("ehr-engine", (ehr,)))
    service = LiveService(engine, fhir_base_url, webhook_senders=senders)
    try:
        event = goal_event()
        # Interface engines often number their messages: two senders may well send the same id.
        first = service.post(event, secret=diet_old, msg_id="evt-1")  # a rotated-out key still works
        assert first.status_code == 202 and first.json()["sender"] == "dietetics"
        other = service.post(goal_event(), secret=ehr, msg_id="evt-1")
        assert other.status_code == 202 and "Idempotent-Replayed" not in other.headers
        assert other.json()["sender"] == "ehr-engine" and other.json()["plan_id"] != first.json()["plan_id"]
        again = service.post(event, secret=diet_new, msg_id="evt-1")  # the same sender's retry, new key
        assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
        assert service.post(goal_event(), secret=SECRET).status_code == 202  # the default sender as before
        with UnitOfWork(engine) as uow:
            assert uow.session is not None
            stored = uow.session.query(InboundEventRow.sender, InboundEventRow.webhook_id).order_by("sender").all()
        assert [tuple(r) for r in stored][:2] == [("default", stored[0][1]), ("dietetics", "evt-1")]
        assert ("ehr-engine", "evt-1") in [tuple(r) for r in stored] and len(stored) == 3
    finally:
        service.server.shutdown()
    withdrawn = LiveService(engine, fhir_base_url, webhook_senders=senders[:1])
    try:
        assert withdrawn.post(goal_event(), secret=ehr).status_code == 401  # its secrets removed: refused
    finally:
        withdrawn.server.shutdown()


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (json.dumps({"type": "goal.proposed"}).encode(), "timestamp"),
        (json.dumps({**goal_event(), "type": "goal.exploded"}).encode(), "type"),
    ],
)
def test_a_malformed_body_gets_400_naming_the_problem(live, body, where):
    answer = requests.post(f"{live.url}/webhooks/team", data=body, headers=signed(body), timeout=10)
    assert answer.status_code == 400
    problem = answer.json()
    assert problem["type"] == "urn:planbridge:problem:invalid-input"
    assert where in problem["errors"]
    assert set(live.row_counts().values()) == {0}


def test_invalid_event_data_names_each_bad_field(live):
    event = goal_event()
    event["data"]["goal"]["priority"] = "urgent"
    event["data"]["goal"]["targets"][0].pop("measure")
    del event["data"]["patient"]["mrn"]
    answer = live.post(event)
    assert answer.status_code == 400
    data_errors = answer.json()["errors"]["data"]
    assert "priority" in data_errors["goal"]
    assert "measure" in data_errors["goal"]["targets"]["0"]
    assert "mrn" in data_errors["patient"]


def test_wrong_content_type_and_oversized_bodies_are_refused(live):
    body = json.dumps(goal_event()).encode()
    as_text = requests.post(
        f"{live.url}/webhooks/team", data=body, headers={**signed(body), "Content-Type": "text/plain"}, timeout=10
    )
    assert as_text.status_code == 415
    huge = b'{"pad": "' + b"x" * (live.settings.max_body_bytes + 10) + b'"}'
    too_big = requests.post(f"{live.url}/webhooks/team", data=huge, headers=signed(huge), timeout=10)
    assert too_big.status_code == 413
    assert too_big.headers["Content-Type"] == "application/problem+json"
    assert set(live.row_counts().values()) == {0}


def test_without_permission_to_create_patients_an_unknown_mrn_is_held_not_invented(engine, fhir_base_url):
    service = LiveService(engine, fhir_base_url, create_patients=False)
    try:
        event = goal_event()
        assert service.post(event).status_code == 202  # accepted and durable even though it cannot go out yet
        service.worker.run_until_idle()
        with UnitOfWork(engine) as uow:
            (entry,) = uow.outbox.list()
        assert (entry.status, entry.attempts) == ("pending", 1)
        assert "PatientNotOnServer" in entry.last_error
        assert event["data"]["patient"]["mrn"] not in entry.last_error  # no MRN in what operators read
        assert service.goals_on_server(event) == []
        assert service.fhir.search("Patient", {"identifier": f"{MRN_SYSTEM}|{event['data']['patient']['mrn']}"}) == []
    finally:
        service.server.shutdown()


def test_an_existing_patient_is_found_by_mrn(engine, fhir_base_url):
    service = LiveService(engine, fhir_base_url, create_patients=False)
    try:
        event = goal_event()
        mrn = event["data"]["patient"]["mrn"]
        patient = service.fhir.request(
            "POST", "Patient", json={"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": mrn}]}
        ).json()
        service.post(event)
        service.worker.run_until_idle()
        (goal,) = service.goals_on_server(event)
        assert goal["subject"]["reference"] == f"Patient/{patient['id']}"
    finally:
        service.server.shutdown()
