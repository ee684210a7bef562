"""Malformed or hostile notifications get a 400 OperationOutcome naming what is wrong, never a 500, on
SQLite and PostgreSQL; what a real server sends still works."""

import copy
import json

import pytest

from service.api.app import create_app
from service.store.uow import UnitOfWork
from tests.integration.test_fhir_notifications import BASE, HEADERS, SECRET, our_goal, queued, status_bundle
from tests.support import settings


@pytest.fixture
def client(engine):
    return create_app(settings(fhir_notify_secret=SECRET, identifier_base=BASE), engine).test_client()


def refused(answer, expression: str | None = None) -> None:
    assert answer.status_code == 400, answer.get_data(as_text=True)[:300]
    assert answer.mimetype == "application/fhir+json"
    (issue,) = answer.json["issue"]
    assert answer.json["resourceType"] == "OperationOutcome" and issue["code"] == "invalid"
    if expression is not None:
        assert issue["expression"] == [expression]


DEEP = b"[" * 10_000 + b"]" * 10_000


def test_deeply_nested_json_is_invalid_not_a_recursion_error(engine, client):
    refused(client.post("/fhir-notifications", data=DEEP, headers=HEADERS))  # was 500 (RecursionError)
    refused(client.put("/fhir-notifications/Goal/1", data=DEEP, headers=HEADERS))
    deep_object = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    refused(client.put("/fhir-notifications/Goal/1", data=deep_object, headers=HEADERS))
    assert queued(engine) == []


def test_a_heartbeat_with_a_5000_digit_count_is_invalid(engine, client):
    bundle = status_bundle("heartbeat", [])
    bundle["entry"][0]["resource"]["parameter"].append(
        {"name": "events-since-subscription-start", "valueString": "9" * 5000}
    )
    answer = client.post("/fhir-notifications", data=json.dumps(bundle), headers=HEADERS)
    refused(answer, "events-since-subscription-start")  # was 500 (int() refuses over 4,300 digits)
    assert queued(engine) == []


def _parameters(bundle: dict) -> list:
    return bundle["entry"][0]["resource"]["parameter"]


def _mutations() -> list[tuple[str, object]]:
    """(name, function of a Backport event-notification bundle) pairs, each making it malformed."""

    def event_number(value):
        return lambda b: _parameters(b)[-1]["part"][0].update(valueString=value)

    return [
        ("digits-not-ascii", event_number("١٢")),
        ("superscript-digit", event_number("²")),  # str.isdigit() says yes, int() says no: was 500
        ("negative", event_number("-1")),
        ("over-64-bits", event_number("9" * 20)),
        (
            "count-a-fraction",
            lambda b: _parameters(b).append({"name": "events-since-subscription-start", "valueDecimal": 1.5}),
        ),
        ("parameter-not-a-list", lambda b: b["entry"][0]["resource"].update(parameter="oops")),
        ("parameters-not-objects", lambda b: b["entry"][0]["resource"].update(parameter=["a", 1])),
        ("part-not-a-list", lambda b: _parameters(b)[-1].update(part={"name": "focus"})),
        ("focus-a-string", lambda b: _parameters(b)[-1]["part"][1].update(valueReference="Goal/1")),
        ("focus-reference-a-number", lambda b: _parameters(b)[-1]["part"][1].update(valueReference={"reference": 7})),
        (
            "subscription-with-nul",
            lambda b: _parameters(b)[0].update(valueReference={"reference": "Subscription/\x00"}),
        ),
        ("subscription-lone-surrogate", lambda b: _parameters(b)[0].update(valueReference={"reference": "S/\ud800"})),
        ("subscription-a-list", lambda b: _parameters(b)[0].update(valueReference=[1])),
        ("type-an-object", lambda b: _parameters(b)[2].update(valueCode={"x": 1})),
        ("entries-not-a-list", lambda b: b.update(entry={"resource": {}})),
        ("entries-not-objects", lambda b: b.update(entry=[1, 2])),
    ]


@pytest.mark.parametrize(("name", "mutate"), _mutations(), ids=[n for n, _ in _mutations()])
def test_a_malformed_backport_notification_is_invalid(engine, client, name, mutate):
    bundle = status_bundle("event-notification", [(1, our_goal(BASE, "plan-a"))])
    mutate(bundle)
    refused(client.post("/fhir-notifications", data=json.dumps(bundle), headers=HEADERS))
    assert queued(engine) == []


def test_the_subscription_status_shape_is_read_as_strictly(engine, client):
    status = {"resourceType": "SubscriptionStatus", "type": "event-notification", "subscription": "oops"}
    bundle = {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}]}
    refused(
        client.post("/fhir-notifications", data=json.dumps(bundle), headers=HEADERS), "SubscriptionStatus.subscription"
    )
    status.update(subscription={"reference": "Subscription/r5"}, notificationEvent={"eventNumber": "1"})
    refused(client.post("/fhir-notifications", data=json.dumps(bundle), headers=HEADERS))
    status["notificationEvent"] = [{"eventNumber": "1", "focus": {"reference": "Goal/77"}}]
    bundle["entry"].append({"resource": our_goal(BASE, "plan-r5")})
    answer = client.post("/fhir-notifications", data=json.dumps(bundle), headers=HEADERS)
    assert answer.status_code == 200 and queued(engine) == [("pull_plan", "plan-r5")]


def test_a_long_subscription_reference_has_its_cursors_on_every_database(engine, client):
    long_reference = "https://ehr.example.org/fhir/R4/Subscription/" + "a" * 200  # was 500 on PostgreSQL
    first = status_bundle("heartbeat", [], total=0)
    _parameters(first)[0]["valueReference"]["reference"] = long_reference
    assert client.post("/fhir-notifications", data=json.dumps(first), headers=HEADERS).status_code == 200
    later = copy.deepcopy(first)
    _parameters(later).append({"name": "events-since-subscription-start", "valueString": "3"})
    assert client.post("/fhir-notifications", data=json.dumps(later), headers=HEADERS).status_code == 200
    assert queued(engine) == [("pull_changed", "*")]  # 3 events the heartbeat counts were never seen
    with UnitOfWork(engine) as uow:
        (name,) = [n for n in uow.sync.cursors("backport:") if n != "backport:Subscription/s1"]
        assert len(name) <= 64 and uow.sync.cursor(name) == "3"


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Goal", "identifier": "oops"},
        {"resourceType": "Goal", "identifier": ["oops"]},
        {"resourceType": "Goal", "identifier": [{"system": f"{BASE}/goal", "value": 7}]},
        {"resourceType": "Goal", "identifier": [{"system": ["x"], "value": "plan-a/g1"}]},
        {"resourceType": "Goal", "identifier": [{"system": f"{BASE}/goal", "value": "plan-a/\x00"}]},
        {"resourceType": "Goal", "identifier": [{"system": f"{BASE}/goal", "value": "plan-a/\ud800"}]},
        {"resourceType": "Goal", "meta": ["1"]},
        {"resourceType": "Goal", "meta": {"versionId": {"v": 1}}},
        {"resourceType": "Goal", "meta": {"versionId": "1\n"}},
        {"resourceType": "Goal", "id": 1},
    ],
    ids=[
        "identifier-not-a-list",
        "identifier-not-objects",
        "value-a-number",
        "system-a-list",
        "value-with-nul",
        "value-lone-surrogate",
        "meta-a-list",
        "version-an-object",
        "version-with-newline",
        "id-a-number",
    ],
)
def test_a_malformed_rest_hook_resource_is_invalid(engine, client, resource):
    refused(client.put("/fhir-notifications/Goal/1", data=json.dumps(resource), headers=HEADERS))
    assert queued(engine) == []


def test_an_identifier_that_cannot_name_a_plan_asks_what_changed(engine, client):
    # The plan id part is no plan id (too long for one, and for the outbox's column): was 500 on PostgreSQL.
    goal = our_goal(BASE, "x" * 200)
    answer = client.put("/fhir-notifications/Goal/77", data=json.dumps(goal), headers=HEADERS)
    assert answer.status_code == 200 and queued(engine) == [("pull_changed", "*")]


def test_a_body_that_is_not_utf8_is_invalid(client):
    refused(client.put("/fhir-notifications/Goal/1", data=b'{"resourceType": "Goal", "id": "\xff"}', headers=HEADERS))
