"""What FhirClient raises for the refusals a sync meets, sent for real to the test FHIR server.

The local server answers like HAPI (see fhir-server/README.md); with $FHIR_TEST_SERVER_URL the same
tests run against that server. Every write here is a transaction, as planbridge pushes plans.
"""

from __future__ import annotations

import os
import uuid

import pytest

from service.fhir import errors
from service.fhir.client import FhirClient

SYSTEM = "urn:planbridge:test:refusals"
LOCAL = not os.environ.get("FHIR_TEST_SERVER_URL")


@pytest.fixture(scope="module")
def client(fhir_base_url):
    return FhirClient(fhir_base_url, timeout=10, max_retries=0)


@pytest.fixture(scope="module")
def subject(client):
    patient = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": uuid.uuid4().hex}]}
    return f"Patient/{client.request('POST', 'Patient', json=patient).json()['id']}"


def goal(subject: str, value: str, text: str = "Walk 30 minutes a day") -> dict:
    return {
        "resourceType": "Goal",
        "identifier": [{"system": SYSTEM, "value": value}],
        "lifecycleStatus": "active",
        "description": {"text": text},
        "subject": {"reference": subject},
    }


def transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def put(resource: dict, url: str, if_match: str | None = None) -> dict:
    request = {"method": "PUT", "url": url, **({"ifMatch": if_match} if if_match else {})}
    return {"resource": resource, "request": request}


def create(client: FhirClient, resource: dict) -> dict:
    return client.request("POST", resource["resourceType"], json=resource).json()


def test_a_conditional_update_matching_two_goals_is_multiple_matches_and_stops(client, subject):
    value = uuid.uuid4().hex
    first, second = create(client, goal(subject, value)), create(client, goal(subject, value))
    bundle = transaction(put(goal(subject, value, "Walk an hour a day"), f"Goal?identifier={SYSTEM}|{value}"))

    with pytest.raises(errors.FhirMultipleMatches) as err:
        client.transaction(bundle, idempotent=True)

    assert err.value.decision == "stop"
    assert err.value.status == 412
    assert err.value.detail.startswith("POST [base] (transaction) failed: ")
    assert "because this search matched 2 resources" in err.value.detail
    if LOCAL:
        assert "HAPI-0988: Failed to UPDATE resource with match URL" in err.value.detail
        assert err.value.issue_codes == ["processing"]  # HAPI's code, not Medplum's `multiple-matches`
    for created in (first, second):  # nothing was written
        assert client.read("Goal", created["id"])["meta"]["versionId"] == "1"


def test_a_plain_conditional_update_matching_two_goals_is_multiple_matches_too(client, subject):
    value = uuid.uuid4().hex
    create(client, goal(subject, value))
    create(client, goal(subject, value))
    with pytest.raises(errors.FhirMultipleMatches) as err:
        client.update_by_identifier(goal(subject, value), SYSTEM, value)
    assert err.value.status == 412 and err.value.decision == "stop"


def test_a_stale_if_match_in_a_transaction_is_a_version_conflict_to_merge(client, subject):
    created = create(client, goal(subject, uuid.uuid4().hex))
    url = f"Goal/{created['id']}"
    client.request("PUT", url, json={**created, "description": {"text": "v2"}}, headers={"If-Match": 'W/"1"'})

    stale = {**created, "description": {"text": "written over v1"}}
    with pytest.raises(errors.FhirVersionConflict) as err:
        client.transaction(transaction(put(stale, url, if_match='W/"1"')), idempotent=True)

    assert err.value.decision == "merge"
    assert err.value.status in (409, 412)  # HAPI says 409, the spec 412
    if LOCAL:  # the local server's hapi profile answers like HAPI, its medplum profile like Medplum
        assert "HAPI-0989" in err.value.detail if err.value.status == 409 else "Precondition Failed" in err.value.detail
    current = client.read("Goal", created["id"])
    assert current["meta"]["versionId"] == "2" and current["description"]["text"] == "v2"


def test_an_if_match_update_of_a_deleted_goal_in_a_transaction_is_not_found_to_merge(client, subject):
    created = create(client, goal(subject, uuid.uuid4().hex))
    url = f"Goal/{created['id']}"
    client.request("DELETE", url)

    with pytest.raises(errors.FhirError) as err:
        client.transaction(transaction(put(created, url, if_match='W/"1"')), idempotent=True)

    assert err.value.decision == "merge"
    if LOCAL:
        assert type(err.value) is errors.FhirNotFound and err.value.status == 404
    else:  # HAPI keeps the deleted row, whose version moved on: it answers 409 HAPI-0989
        assert isinstance(err.value, errors.FhirNotFound | errors.FhirVersionConflict)
    with pytest.raises(errors.FhirGone) as gone:  # still deleted: reading it says 410
        client.read("Goal", created["id"])
    assert gone.value.decision == "merge" and gone.value.status == 410
