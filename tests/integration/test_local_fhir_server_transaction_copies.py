"""What the local FHIR server keeps of a transaction's entries, pinned where its request handling copies and walks them.

The server copies each transaction entry (rewriting `urn:uuid:` placeholders), walks each written resource once for
its references (placeholders anywhere, contained resources included; the `hapi` profile then checks only the
container's own reference search parameter paths, the `medplum` profile every reference) and stores one
serialisation of it, handing the client a copy. These tests fix the observable results of those steps.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import requests

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(HEADERS)
        yield session


@pytest.fixture
def subject(http: requests.Session, fhir_profile_url: str) -> str:
    response = http.post(f"{fhir_profile_url}/Patient", json={"resourceType": "Patient"}, timeout=30)
    assert response.status_code == 201, response.text
    return f"Patient/{response.json()['id']}"


def goal(subject: str, text: str = "Walk 30 minutes a day", **more: object) -> dict:
    return {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": text},
        "subject": {"reference": subject},
        **more,
    }


def transaction(http: requests.Session, base: str, *entries: dict, body: str | None = None) -> requests.Response:
    bundle = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": list(entries)})
    headers = {"Prefer": "return=representation"}
    return http.post(base, data=body if body is not None else bundle, headers=headers, timeout=30)


def post(resource: dict, full_url: str | None = None) -> dict:
    entry: dict = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def stored(http: requests.Session, base: str, response: requests.Response) -> dict:
    """The one resource a transaction wrote, as the transaction answered it; checked against a read."""
    assert response.status_code == 200, response.text
    (entry,) = response.json()["entry"]
    answered = entry["resource"]
    read = http.get(f"{base}/{answered['resourceType']}/{answered['id']}", timeout=30)
    assert read.status_code == 200, read.text
    assert read.json() == answered, "the transaction answered another version than the one it stored"
    return answered


def without_server_members(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def test_a_transaction_answers_with_the_version_it_stored(http, fhir_profile_url, subject):
    sent = goal(subject, note=[{"text": "keep every member"}], target=[{"dueDate": "2027-01-31"}])
    answered = stored(http, fhir_profile_url, transaction(http, fhir_profile_url, post(sent)))
    assert without_server_members(answered) == sent
    assert answered["meta"]["versionId"] == "1"


def test_a_transaction_rewrites_its_placeholders_in_every_string_but_only_as_written(http, fhir_profile_url, subject):
    """Medplum's batch processor replaces a placeholder wherever a string holds it, not only in references; an
    upper-case `URN:UUID:` is not a placeholder and stays as it is."""
    placeholder = f"urn:uuid:{uuid.uuid4()}"
    text = f"see {placeholder}; not {placeholder.upper()}"
    response = transaction(http, fhir_profile_url, post(goal(subject, text), placeholder))
    answered = stored(http, fhir_profile_url, response)
    own = f"Goal/{answered['id']}"
    assert answered["description"]["text"] == f"see {own}; not {placeholder.upper()}"


def test_a_placeholder_inside_a_contained_resource_is_refused_with_hapi_0541(http, fhir_profile_url, subject):
    placeholder = f"urn:uuid:{uuid.uuid4()}"
    inner = goal(placeholder, id="inner")
    response = transaction(http, fhir_profile_url, post(goal(subject, contained=[inner])))
    assert response.status_code == 400, response.text
    (issue,) = response.json()["issue"]
    assert issue["diagnostics"] == (
        f"HAPI-0541: Unable to satisfy placeholder ID {placeholder} found in element named 'subject' "
        "within resource of type: Goal"
    )


def test_the_hapi_profile_does_not_check_a_contained_resource_of_the_container_s_own_type(
    http, fhir_hapi_url, fhir_medplum_url
):
    """HAPI indexes the container's own references only: a contained Goal naming a Patient the server does not
    hold is stored on `hapi` although `Goal.subject` is one of HAPI's paths; `medplum` checks every reference."""
    missing = f"Patient/missing-{uuid.uuid4().hex[:12]}"
    for base, status in ((fhir_hapi_url, 200), (fhir_medplum_url, 400)):
        holder = http.post(f"{base}/Patient", json={"resourceType": "Patient"}, timeout=30).json()
        sent = goal(f"Patient/{holder['id']}", contained=[goal(missing, id="inner")])
        response = transaction(http, base, post(sent))
        assert response.status_code == status, (base, response.text)
        if status == 200:
            assert without_server_members(stored(http, base, response)) == sent
        else:
            (issue,) = response.json()["issue"]
            assert issue["diagnostics"] == f"HAPI-1094: Resource {missing} not found, specified in path: Goal.subject"


def test_a_member_named_proto_stays_a_member_of_the_stored_resource(http, fhir_profile_url, subject):
    """JSON may name a member `__proto__`; copying an entry must keep it as a member, not make it a prototype.
    (Medplum's validator does not refuse the unknown member; that is pinned here as it is, not endorsed.)"""
    text = (
        '{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Goal",'
        '"lifecycleStatus":"active","description":{"text":"p","__proto__":{"y":2}},'
        f'"subject":{{"reference":"{subject}"}},"__proto__":{{"x":1}}}},'
        '"request":{"method":"POST","url":"Goal"}}]}'
    )
    answered = stored(http, fhir_profile_url, transaction(http, fhir_profile_url, body=text))
    assert answered["__proto__"] == {"x": 1}
    assert answered["description"] == {"text": "p", "__proto__": {"y": 2}}
