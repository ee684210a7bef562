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
        (410, errors.FhirGone),
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


def test_a_conditional_update_escapes_search_special_characters_in_the_identifier(client):
    client.mock.add(responses.PUT, f"{BASE}/Goal", json={"resourceType": "Goal", "id": "7", "meta": {"versionId": "1"}})
    client.update_by_identifier({"resourceType": "Goal"}, "urn:s", "12,3|4\\5")
    # FHIR escapes (a backslash before , | \\), then URL-encoded: one value, never "12" OR "3|4..."
    assert client.mock.calls[0].request.url == f"{BASE}/Goal?identifier=urn%3As%7C12%5C%2C3%5C%7C4%5C%5C5"


def test_connection_errors_become_transport_errors(client):
    client.mock.add(responses.GET, f"{BASE}/Goal/1", body=requests.ConnectionError("refused"))
    with pytest.raises(errors.FhirTransportError):
        client.read("Goal", "1")


# --- Refusals: which error (and decision) a 4xx becomes, by status and OperationOutcome -------------


def hapi(code: str, diagnostics: str) -> dict:
    """An OperationOutcome as HAPI writes it: a generated narrative and one error issue."""
    div = f'<div xmlns="http://www.w3.org/1999/xhtml"><h1>Operation Outcome</h1><p>{diagnostics}</p></div>'
    return {
        "resourceType": "OperationOutcome",
        "text": {"status": "generated", "div": div},
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


MATCH_2 = 'match URL "Goal?identifier=https://pb/id/goal|g-1" because this search matched 2 resources'
STALE = "HAPI-0989: Trying to update Goal/1/_history/1 but this is not the current version"
REFERENCED = (
    "HAPI-0550: HAPI-0515: Unable to delete Patient/1 because at least one resource has a reference to this "
    "resource. First reference found was resource Goal/2 in path Goal.subject"
)


@pytest.mark.parametrize(
    ("status", "body", "kind", "decision"),
    [
        # version conflicts: HAPI (409, `processing`, HAPI-0989), also wrapped by a transaction (HAPI-0550)
        (409, answer("hapi-409-version-conflict.json"), errors.FhirVersionConflict, "merge"),
        (409, hapi("processing", f"HAPI-0550: HAPI-0550: {STALE}"), errors.FhirVersionConflict, "merge"),
        (409, hapi("conflict", STALE), errors.FhirVersionConflict, "merge"),
        (412, hapi("conflict", "Precondition Failed"), errors.FhirVersionConflict, "merge"),
        (412, hapi("processing", "Version mismatch"), errors.FhirVersionConflict, "merge"),
        (409, hapi("lock-error", "row locked"), errors.FhirVersionConflict, "merge"),
        # servers that don't say, or say something we don't know, keep the spec's meaning
        (409, None, errors.FhirVersionConflict, "merge"),
        (412, None, errors.FhirVersionConflict, "merge"),
        (409, hapi("exception", "something odd"), errors.FhirVersionConflict, "merge"),
        # a conditional operation matched several resources: HAPI's 412 (0988 update, 0958 create, 0962 delete)
        (
            412,
            hapi("processing", f"HAPI-0988: Failed to UPDATE resource with {MATCH_2}"),
            errors.FhirMultipleMatches,
            "stop",
        ),
        (
            412,
            hapi("processing", f"HAPI-0958: Failed to CREATE Goal with {MATCH_2}"),
            errors.FhirMultipleMatches,
            "stop",
        ),
        (412, hapi("processing", f"Failed to DELETE resource with {MATCH_2}"), errors.FhirMultipleMatches, "stop"),
        (
            412,
            hapi("multiple-matches", "Multiple resources found matching condition"),
            errors.FhirMultipleMatches,
            "stop",
        ),
        (
            409,
            hapi("multiple-matches", "Conditional PUT matched multiple resources"),
            errors.FhirMultipleMatches,
            "stop",
        ),
        # other refusals that are not version conflicts
        (409, hapi("processing", REFERENCED), errors.FhirReferenceConflict, "stop"),
        (409, hapi("duplicate", "Goal with identifier g-1 already exists"), errors.FhirRefused, "stop"),
        (412, hapi("duplicate", "Duplicate identifier"), errors.FhirRefused, "stop"),
        (409, hapi("business-rule", "A completed Goal can not be reopened"), errors.FhirRefused, "stop"),
        (412, hapi("too-costly", "Too many matches to process"), errors.FhirRefused, "stop"),
        (
            409,
            hapi(
                "processing",
                "HAPI-1093: Can not create resource of type Goal as it would create a duplicate unique index",
            ),
            errors.FhirRefused,
            "stop",
        ),
        # the target is gone or unknown: re-read before writing again
        (410, hapi("deleted", "HAPI-2244: Resource Goal/5/_history/2 has been deleted"), errors.FhirGone, "merge"),
        (410, None, errors.FhirGone, "merge"),
        (404, hapi("deleted", "Resource Goal/5 was deleted"), errors.FhirGone, "merge"),
        (409, hapi("deleted", "Resource Goal/5 was deleted"), errors.FhirGone, "merge"),
        (404, hapi("not-found", "HAPI-2001: Resource Goal/5 is not known"), errors.FhirNotFound, "merge"),
        (412, hapi("not-found", "Resource Goal/5 is not known"), errors.FhirNotFound, "merge"),
        # diagnostics only refine 409/412: a 404 that mentions several matches is still a 404
        (404, hapi("not-found", f"Failed to UPDATE resource with {MATCH_2}"), errors.FhirNotFound, "merge"),
        # everything else, by status
        (400, hapi("processing", "HAPI-0450: Failed to parse request body"), errors.FhirValidationFailed, "stop"),
        (422, answer("hapi-422-several-issues.json"), errors.FhirValidationFailed, "stop"),
        (401, None, errors.FhirAuthError, "stop"),
        (403, hapi("forbidden", "Access denied"), errors.FhirAuthError, "stop"),
        (415, hapi("not-supported", "HAPI-1895: Unsupported content type"), errors.FhirRefused, "stop"),
        (500, hapi("exception", "HAPI-0389: Failed to call access method"), errors.FhirServerError, "retry"),
        (503, None, errors.FhirServerError, "retry"),
    ],
)
def test_refusals_are_classified_by_status_and_outcome(client, status, body, kind, decision):
    client.mock.add(responses.POST, BASE, json=body, status=status) if body else client.mock.add(
        responses.POST, BASE, body="", status=status
    )
    with pytest.raises(errors.FhirError) as err:
        client.transaction({"resourceType": "Bundle", "type": "transaction"}, idempotent=False)
    assert type(err.value) is kind
    assert err.value.decision == decision
    assert err.value.status == status
    assert err.value.outcome == body


def test_a_transaction_refusal_names_the_base_and_keeps_hapis_diagnostics(client):
    body = hapi("processing", f"HAPI-0988: Failed to UPDATE resource with {MATCH_2}")
    client.mock.add(responses.POST, BASE, json=body, status=412)
    with pytest.raises(errors.FhirMultipleMatches) as err:
        client.transaction({"resourceType": "Bundle", "type": "transaction"}, idempotent=True)
    assert err.value.detail == f"POST [base] (transaction) failed: HAPI-0988: Failed to UPDATE resource with {MATCH_2}"
    assert str(err.value).endswith("(HTTP 412)")
    assert err.value.issue_codes == ["processing"]
    assert len(client.mock.calls) == 1  # a refusal is never retried, even for an idempotent transaction


def test_a_transport_error_on_a_transaction_names_the_base_and_says_retry(client):
    client.mock.add(responses.POST, BASE, body=requests.ConnectionError("refused"))
    with pytest.raises(errors.FhirTransportError) as err:
        client.transaction({"resourceType": "Bundle"}, idempotent=False)
    assert err.value.detail == "POST [base] (transaction): ConnectionError"
    assert err.value.decision == "retry"


def test_issue_codes_list_every_issue_and_the_first_known_error_code_decides(client):
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "warning", "code": "informational", "diagnostics": "note"},
            {"severity": "error", "code": "exception", "diagnostics": "unknown to the table"},
            {"severity": "error", "code": "duplicate", "diagnostics": "identifier already used"},
        ],
    }
    client.mock.add(responses.PUT, f"{BASE}/Goal/1", json=body, status=409)
    with pytest.raises(errors.FhirRefused) as err:
        client.request("PUT", "Goal/1", json={"resourceType": "Goal"})
    assert err.value.issue_codes == ["informational", "exception", "duplicate"]
    assert err.value.detail == "PUT Goal/1 failed: note; unknown to the table; identifier already used"


def test_every_error_class_has_a_decision():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.FhirError)]
    assert {c.__name__: c.decision for c in classes} == {
        "FhirError": "stop",
        "FhirTransportError": "retry",
        "FhirNotFound": "merge",
        "FhirGone": "merge",
        "FhirVersionConflict": "merge",
        "FhirMultipleMatches": "stop",
        "FhirReferenceConflict": "stop",
        "FhirRefused": "stop",
        "FhirValidationFailed": "stop",
        "FhirTransactionTooLarge": "split",
        "FhirAuthError": "stop",
        "FhirServerError": "retry",
        "FhirAmbiguous": "stop",
    }
    assert issubclass(errors.FhirGone, errors.FhirNotFound)  # callers catching FhirNotFound still merge
    assert errors.FhirError("x").issue_codes == []
