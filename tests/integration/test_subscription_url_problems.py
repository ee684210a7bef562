"""What `POST /subscriptions` answers for a URL it cannot read, a URL it refuses, and `*` mixed with types.

docs/notifications.md: a URL that cannot be read as an http(s) URL is `400` naming `url`; one that is not
http(s), names port 0 or reaches a non-public address is `422 url-refused`. A URL without a host or with a
port that is no port was a `422 url-refused` without `errors`; `url-refused` problems carried the title of
another type ("Rule violation"); and `["*", "goal.proposed"]` was refused as `unknown: *`.
"""

from __future__ import annotations

import pytest

from service.api.app import create_app
from service.api.errors import _planbridge_error
from service.domain.errors import RuleViolation
from service.notify.ssrf import OutboundGuard, OutboundRefused
from tests.support import settings

KEY = "pb_test_url_problems"
HOOK = {"event_types": ["*"]}


@pytest.fixture
def client(engine):
    return create_app(settings(api_keys=(KEY,), outbound_allow=()), engine).test_client()


def post(client, body: dict):
    return client.post("/subscriptions", json=body, headers={"X-API-Key": KEY})


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://", "it has no host"),
        ("http:///x", "it has no host"),
        ("https://:443/x", "it has no host"),
        ("http://example.org:99999/x", "its port is not a number from 0 to 65535"),
        ("http://example.org:abc/x", "its port is not a number from 0 to 65535"),
    ],
)
def test_a_url_without_a_host_or_with_no_port_is_a_400_naming_url(client, url, reason):
    answer = post(client, {"url": url, **HOOK})

    assert answer.status_code == 400, answer.text
    assert answer.content_type == "application/problem+json"
    problem = answer.get_json()
    assert problem["type"] == "urn:planbridge:problem:invalid-input" and problem["title"] == "Invalid input"
    assert problem["errors"] == {"url": [f"not a readable URL: {reason}"]}
    assert client.get("/subscriptions", headers={"X-API-Key": KEY}).get_json() == []
    with pytest.raises(OutboundRefused):  # the guard before each delivery refuses it too
        OutboundGuard(()).check(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [("http://10.0.0.1/hook", "10.0.0.1 is a private address"), ("ftp://", "only http and https")],
)
def test_a_refused_url_carries_its_own_title(client, url, reason):
    answer = post(client, {"url": url, **HOOK})

    assert answer.status_code == 422, answer.text
    problem = answer.get_json()
    assert problem["type"] == "urn:planbridge:problem:url-refused"
    assert problem["title"] == "URL refused" and reason in problem["detail"]


def test_a_rule_violation_keeps_its_title(engine):
    app = create_app(settings(api_keys=(KEY,)), engine)
    with app.test_request_context():
        answer = _planbridge_error(RuleViolation("the plan is completed"))
    assert answer.status_code == 422
    assert answer.get_json() | {"detail": None} == {
        "type": "urn:planbridge:problem:rule-violation", "title": "Rule violation", "status": 422, "detail": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("event_types", "errors"),
    [
        (["*", "goal.proposed"], ['"*" stands for every event type and must be alone: ["*"]']),
        (["goal.proposed", "*", "*"], ['"*" stands for every event type and must be alone: ["*"]']),
    ],
)
def test_a_star_beside_other_types_is_refused_as_not_alone_not_as_unknown(client, event_types, errors):
    answer = post(client, {"url": "https://hooks.example.org/x", "event_types": event_types})

    assert answer.status_code == 400, answer.text
    assert answer.get_json()["errors"] == {"event_types": errors}


def test_an_unknown_type_beside_a_star_is_named_as_unknown_and_the_star_as_not_alone(client):
    answer = post(client, {"url": "https://hooks.example.org/x", "event_types": ["*", "goal.nope"]})

    assert answer.status_code == 400, answer.text
    unknown, alone = answer.get_json()["errors"]["event_types"]
    assert unknown.startswith("unknown: goal.nope; known: ") and "*" not in unknown.split(";")[0]
    assert alone == '"*" stands for every event type and must be alone: ["*"]'
