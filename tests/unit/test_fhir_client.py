"""The client's own edge cases, against HAPI-shaped answers (kept in fixtures/server/) served by `responses`."""

import json

import pytest
import requests
import responses

from service.fhir import errors
from service.fhir.client import FhirClient
from tests.support import FIXTURES

BASE = "http://fhir.test/baseR4"
SERVER = FIXTURES / "server"


def answer(name: str):
    """Return a recorded server answer: parsed JSON, or the raw text of an HTML page."""
    text = (SERVER / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


def outcome(diagnostics: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}],
    }


@pytest.fixture
def client():
    waits: list[float] = []
    c = FhirClient(BASE, timeout=2, sleep=waits.append)
    c.waits = waits
    with responses.RequestsMock() as mock:
        c.mock = mock
        yield c


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (409, errors.FhirVersionConflict),
        (412, errors.FhirVersionConflict),
        (400, errors.FhirValidationFailed),
        (422, errors.FhirValidationFailed),
        (401, errors.FhirAuthError),
        (403, errors.FhirAuthError),
        (404, errors.FhirNotFound),
        (410, errors.FhirNotFound),
        (500, errors.FhirServerError),
    ],
)
def test_each_status_raises_its_error_with_the_outcome(client, status, kind):
    body = answer("hapi-409-version-conflict.json")
    client.mock.add(responses.PUT, f"{BASE}/Goal/1", json=body, status=status)
    with pytest.raises(kind) as err:
        client.request("PUT", "Goal/1", json={"resourceType": "Goal"})
    assert err.value.status == status
    assert err.value.outcome == body
    assert "HAPI-0989" in err.value.detail


def test_a_non_fhir_error_body_still_maps(client):
    client.mock.add(responses.GET, f"{BASE}/Goal/1", body=answer("proxy-502-page.html"), status=500)
    with pytest.raises(errors.FhirServerError) as err:
        client.read("Goal", "1")
    assert err.value.outcome is None


def test_search_follows_next_links_exactly_and_stops_on_an_empty_last_page(client):
    last = answer("hapi-searchset-last-page-empty.json")  # HAPI's empty last page: no entries, no next
    page3 = last["link"][0]["url"]
    page2 = page3.replace("_getpagesoffset=4", "_getpagesoffset=2")
    client.mock.add(
        responses.GET,
        f"{BASE}/Goal",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": page2}],
            "entry": [{"resource": {"id": "1"}, "search": {"mode": "match"}}, {"resource": {"id": "2"}}],
        },
    )
    client.mock.add(
        responses.GET,
        page2,
        json={
            "resourceType": "Bundle",
            "link": [{"relation": "next", "url": page3}],
            "entry": [{"resource": {"id": "3"}}, {"resource": {"id": "p"}, "search": {"mode": "include"}}],
        },
    )
    client.mock.add(responses.GET, page3, json=last)
    assert [r["id"] for r in client.search("Goal", {"_count": "2"})] == ["1", "2", "3"]
    assert client.mock.calls[1].request.url == page2


def test_find_one_refuses_several_matches(client):
    client.mock.add(
        responses.GET,
        f"{BASE}/Patient",
        json={"resourceType": "Bundle", "entry": [{"resource": {"id": "1"}}, {"resource": {"id": "2"}}]},
    )
    with pytest.raises(errors.FhirAmbiguous):
        client.find_one("Patient", {"identifier": "s|v"})


def test_safe_requests_are_retried_on_503(client):
    client.mock.add(responses.GET, f"{BASE}/Goal/1", status=503, headers={"Retry-After": "0"})
    client.mock.add(responses.GET, f"{BASE}/Goal/1", json={"resourceType": "Goal", "id": "1"})
    assert client.read("Goal", "1")["id"] == "1"
    assert len(client.mock.calls) == 2


def test_a_plain_post_is_not_retried(client):
    client.mock.add(responses.POST, f"{BASE}/Patient", status=503, json=answer("hapi-503-busy.json"))
    with pytest.raises(errors.FhirServerError):
        client.request("POST", "Patient", json={"resourceType": "Patient"})
    assert len(client.mock.calls) == 1
    client.mock.add(responses.POST, f"{BASE}", status=502)
    with pytest.raises(errors.FhirServerError):
        client.transaction({"resourceType": "Bundle"}, idempotent=False)
    assert len(client.mock.calls) == 2


def test_a_conditional_create_and_an_all_conditional_transaction_are_retried(client):
    client.mock.add(responses.POST, f"{BASE}/Patient", status=503)
    client.mock.add(responses.POST, f"{BASE}/Patient", json={"resourceType": "Patient", "id": "1"})
    assert client.create_if_none_exist({"resourceType": "Patient"}, "identifier=s|v")["id"] == "1"
    client.mock.add(responses.POST, f"{BASE}", status=504)
    client.mock.add(responses.POST, f"{BASE}", json={"resourceType": "Bundle", "type": "transaction-response"})
    assert client.transaction({"resourceType": "Bundle"}, idempotent=True)["type"] == "transaction-response"
    assert len(client.mock.calls) == 4


def test_retry_after_is_honoured_in_seconds_and_as_a_date(client):
    client.mock.add(responses.GET, f"{BASE}/Goal/1", status=429, headers={"Retry-After": "7"})
    client.mock.add(
        responses.GET, f"{BASE}/Goal/1", status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )
    client.mock.add(responses.GET, f"{BASE}/Goal/1", json={"resourceType": "Goal", "id": "1"})
    client.read("Goal", "1")
    assert client.waits == [7.0, 0.0]  # a date in the past means: now


def test_backoff_grows_is_jittered_and_capped_then_gives_up(client):
    for _ in range(client.max_retries + 1):
        client.mock.add(responses.GET, f"{BASE}/Goal/1", status=502)
    with pytest.raises(errors.FhirServerError) as err:
        client.read("Goal", "1")
    assert err.value.status == 502
    assert len(client.waits) == client.max_retries
    for attempt, wait in enumerate(client.waits):
        assert 0 <= wait <= min(client.max_wait, client.backoff_base * 2**attempt)


def test_timeouts_are_retried_for_safe_requests_only(client):
    client.mock.add(responses.GET, f"{BASE}/Goal/1", body=requests.Timeout("slow"))
    client.mock.add(responses.GET, f"{BASE}/Goal/1", json={"resourceType": "Goal", "id": "1"})
    assert client.read("Goal", "1")["id"] == "1"
    client.mock.add(responses.POST, f"{BASE}/Goal", body=requests.Timeout("slow"))
    with pytest.raises(errors.FhirTransportError):
        client.request("POST", "Goal", json={"resourceType": "Goal"})


def test_an_outcome_with_several_issues_keeps_them_all(client):
    body = answer("hapi-422-several-issues.json")
    client.mock.add(responses.POST, f"{BASE}/Goal", json=body, status=422)
    with pytest.raises(errors.FhirValidationFailed) as err:
        client.request("POST", "Goal", json={})
    assert "Goal.subject" in err.value.detail and "'banana'" in err.value.detail
    assert len(err.value.outcome["issue"]) == 2


def test_conditional_update_sends_the_identifier_as_the_condition(client):
    client.mock.add(responses.PUT, f"{BASE}/Goal", json={"resourceType": "Goal", "id": "7", "meta": {"versionId": "1"}})
    client.update_by_identifier({"resourceType": "Goal"}, "https://pb/id/goal", "plan-1/g 1")
    sent = client.mock.calls[0].request
    assert sent.url == f"{BASE}/Goal?identifier=https%3A%2F%2Fpb%2Fid%2Fgoal%7Cplan-1%2Fg%201"
    assert sent.headers["Content-Type"].startswith("application/fhir+json")


def test_connection_errors_become_transport_errors(client):
    client.mock.add(responses.GET, f"{BASE}/Goal/1", body=requests.ConnectionError("refused"))
    with pytest.raises(errors.FhirTransportError):
        client.read("Goal", "1")
