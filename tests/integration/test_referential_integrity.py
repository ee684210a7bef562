"""Referential integrity on the FHIR server the tests run against, as HAPI FHIR enforces it by default.

A create or update (alone, or inside a Bundle) whose resource names `Type/id` that the server does not hold is
refused with 400 and HAPI's `HAPI-1094: Resource Patient/x not found, specified in path: Goal.subject`
(`HAPI-1096 ... is deleted ...` for a deleted one). Inside a transaction the references are checked once all
its entries are in place (entries may name each other), a `urn:uuid:`/`urn:oid:` placeholder no entry's
fullUrl resolves is refused (`HAPI-0541`), and a refused transaction keeps nothing. `#contained`, identifier-only
and display-only references are not checked (HAPI does not either).

Absolute references: `hapi` makes one on its own base relative as it reads the request (HAPI's parser does, with its
server base set) and refuses one on another server with `HAPI-0507` (HAPI's `allow_external_references` is off by
default); `medplum` refuses every absolute reference (Medplum's `checkReferencesOnWrite` reads only `Type/id`);
`--allow-external-references` stores those to other servers as they are.

Which references are checked differs by profile: `hapi` checks those on its reference search parameters'
paths (HAPI's resource links), `medplum` every reference (Medplum's `checkReferencesOnWrite`). Deleting a
referenced resource is refused (409 `HAPI-0550: HAPI-0515 ...`) only with `--referential-integrity-on-delete`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import requests

from service.devfhir import LocalFhirServer

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
SYSTEM = "urn:planbridge:test:refint"
local_only = pytest.mark.skipif(
    bool(os.environ.get("FHIR_TEST_SERVER_URL")), reason="a behaviour of the local server's profiles or options"
)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(HEADERS)
        yield session


def unique() -> str:
    return uuid.uuid4().hex


def goal(subject: str, value: str | None = None, **more: object) -> dict:
    return {
        "resourceType": "Goal",
        "identifier": [{"system": SYSTEM, "value": value or unique()}],
        "lifecycleStatus": "active",
        "description": {"text": "Walk 30 minutes a day"},
        "subject": {"reference": subject},
        **more,
    }


def create(http: requests.Session, base: str, resource: dict) -> dict:
    response = http.post(f"{base}/{resource['resourceType']}", json=resource, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def refused(response: requests.Response, status: int = 400) -> str:
    """Assert HAPI's refusal (status, issue code `processing`) and return its diagnostics."""
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["severity"] == "error" and issue["code"] == "processing", issue
    return issue["diagnostics"]


def count(http: requests.Session, base: str, resource_type: str, value: str) -> int:
    response = http.get(f"{base}/{resource_type}", params={"identifier": f"{SYSTEM}|{value}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["total"]


def transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def post(resource: dict, full_url: str | None = None) -> dict:
    entry: dict = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def patient(value: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}]}


@pytest.fixture
def subject(http, fhir_profile_url) -> str:
    return f"Patient/{create(http, fhir_profile_url, patient(unique()))['id']}"


# ---- plain writes ----


def test_a_create_naming_a_resource_the_server_does_not_hold_is_refused_with_hapi_1094(http, fhir_profile_url):
    missing = f"Patient/missing-{unique()[:12]}"
    value = unique()
    response = http.post(f"{fhir_profile_url}/Goal", json=goal(missing, value), timeout=30)
    assert refused(response) == f"HAPI-1094: Resource {missing} not found, specified in path: Goal.subject"
    assert count(http, fhir_profile_url, "Goal", value) == 0


def test_an_update_naming_a_missing_resource_is_refused_and_changes_nothing(http, fhir_profile_url, subject):
    created = create(http, fhir_profile_url, goal(subject))
    changed = {**created, "subject": {"reference": "Patient/never-was"}}
    response = http.put(f"{fhir_profile_url}/Goal/{created['id']}", json=changed, timeout=30)
    assert "HAPI-1094: Resource Patient/never-was not found, specified in path: Goal.subject" in refused(response)
    now = http.get(f"{fhir_profile_url}/Goal/{created['id']}", timeout=30).json()
    assert now["subject"] == {"reference": subject} and now["meta"]["versionId"] == created["meta"]["versionId"]


def test_a_reference_to_a_deleted_resource_is_refused_with_hapi_1096(http, fhir_profile_url):
    gone = create(http, fhir_profile_url, patient(unique()))
    assert http.delete(f"{fhir_profile_url}/Patient/{gone['id']}", timeout=30).status_code in (200, 204)
    response = http.post(f"{fhir_profile_url}/Goal", json=goal(f"Patient/{gone['id']}"), timeout=30)
    assert refused(response) == f"HAPI-1096: Resource Patient/{gone['id']} is deleted, specified in path: Goal.subject"


def test_references_the_server_cannot_check_are_accepted(http, fhir_profile_url, subject):
    """`#contained`, identifier-only and display-only references: as on HAPI. (An absolute URL to another server
    was here too, stored by both profiles: HAPI and Medplum refuse it by default, see below.)"""
    resource = goal(
        subject,
        contained=[{"resourceType": "Condition", "id": "c1", "subject": {"reference": subject}}],
        addresses=[
            {"reference": "#c1"},
            {"identifier": {"system": SYSTEM, "value": "by-identifier"}},
            {"display": "Knee replacement"},
        ],
    )
    create(http, fhir_profile_url, resource)


def test_a_stored_bundle_s_entries_are_not_checked(http, fhir_profile_url):
    """A Bundle stored as a resource (a `collection`) is not its entries: they name each other within the Bundle,
    and HAPI does not index them. (The medplum profile looked into them at first and refused `Patient/p1`.)"""
    entries = [
        {"fullUrl": "http://ehr.example.org/fhir/Patient/p1", "resource": {"resourceType": "Patient", "id": "p1"}},
        {"fullUrl": "http://ehr.example.org/fhir/Goal/g1", "resource": {**goal("Patient/p1"), "id": "g1"}},
    ]
    create(http, fhir_profile_url, {"resourceType": "Bundle", "type": "collection", "entry": entries})


def test_a_versioned_reference_is_checked_by_its_resource(http, fhir_profile_url, subject):
    create(http, fhir_profile_url, goal(f"{subject}/_history/1"))
    response = http.post(f"{fhir_profile_url}/Goal", json=goal("Patient/nobody/_history/1"), timeout=30)
    assert refused(response) == "HAPI-1094: Resource Patient/nobody not found, specified in path: Goal.subject"


# ---- transactions and batches ----


def test_a_transaction_may_name_its_own_entries_by_placeholder_or_by_id_in_any_order(http, fhir_profile_url):
    """References are checked once the transaction's own creates are in place: the Goal comes first and names the
    Patient the entry after it creates with a client id, the CarePlan names the Goal by its urn:uuid."""
    patient_id = f"pb-{unique()[:16]}"
    goal_urn = f"urn:uuid:{uuid.uuid4()}"
    careplan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": f"Patient/{patient_id}"},
        "goal": [{"reference": goal_urn}],
    }
    bundle = transaction(
        post(goal(f"Patient/{patient_id}"), goal_urn),
        {
            "resource": {**patient(unique()), "id": patient_id},
            "request": {"method": "PUT", "url": f"Patient/{patient_id}"},
        },
        post(careplan),
    )
    response = http.post(fhir_profile_url, json=bundle, timeout=30)
    assert response.status_code == 200, response.text
    assert all(e["response"]["status"][:3] in ("200", "201") for e in response.json()["entry"]), response.text


def test_a_transaction_naming_a_missing_resource_is_refused_and_keeps_nothing(http, fhir_profile_url):
    kept, dangling = unique(), unique()
    bundle = transaction(
        post(patient(kept), f"urn:uuid:{uuid.uuid4()}"),
        post(goal("Patient/not-on-this-server", dangling)),
    )
    response = http.post(fhir_profile_url, json=bundle, timeout=30)
    diagnostics = refused(response)
    assert "HAPI-1094: Resource Patient/not-on-this-server not found, specified in path: Goal.subject" in diagnostics
    assert count(http, fhir_profile_url, "Patient", kept) == 0, "a refused transaction kept its Patient"
    assert count(http, fhir_profile_url, "Goal", dangling) == 0


@pytest.mark.parametrize("placeholder", ["urn:uuid:5e1d0c7a-0000-4000-8000-00000000dead", "urn:oid:1.2.3.999"])
def test_a_placeholder_no_entry_resolves_is_refused_with_hapi_0541(http, fhir_profile_url, placeholder):
    kept = unique()
    bundle = transaction(post(patient(kept), f"urn:uuid:{uuid.uuid4()}"), post(goal(placeholder)))
    response = http.post(fhir_profile_url, json=bundle, timeout=30)
    assert refused(response) == (
        f"HAPI-0541: Unable to satisfy placeholder ID {placeholder} found in element named 'subject' "
        "within resource of type: Goal"
    )
    assert count(http, fhir_profile_url, "Patient", kept) == 0


def test_a_batch_refuses_only_the_entry_naming_a_missing_resource(http, fhir_profile_url):
    kept, dangling = unique(), unique()
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [post(patient(kept)), post(goal("Patient/gone-1", dangling))],
    }
    response = http.post(fhir_profile_url, json=bundle, timeout=30)
    assert response.status_code == 200, response.text
    first, second = response.json()["entry"]
    assert first["response"]["status"].startswith("201")
    assert second["response"]["status"].startswith("400")
    assert "HAPI-1094: Resource Patient/gone-1 not found" in second["response"]["outcome"]["issue"][0]["diagnostics"]
    assert count(http, fhir_profile_url, "Patient", kept) == 1 and count(http, fhir_profile_url, "Goal", dangling) == 0


# ---- which references each profile checks ----


@local_only
def test_the_medplum_profile_checks_every_reference_and_the_hapi_profile_those_hapi_indexes(
    http, fhir_medplum_url, fhir_hapi_url
):
    """`Goal.addresses` is on no R4 search parameter, so HAPI stores a dangling one; Medplum (with its project
    setting `checkReferencesOnWrite`) refuses it. `CarePlan.addresses` (search parameter `condition`) is
    refused by both."""
    for base in (fhir_medplum_url, fhir_hapi_url):
        who = f"Patient/{create(http, base, patient(unique()))['id']}"
        addressed = goal(who, addresses=[{"reference": "Condition/not-here"}])
        careplan = {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": who},
            "addresses": [{"reference": "Condition/not-here"}],
        }
        response = http.post(f"{base}/CarePlan", json=careplan, timeout=30)
        assert (
            refused(response)
            == "HAPI-1094: Resource Condition/not-here not found, specified in path: CarePlan.addresses"
        )
        response = http.post(f"{base}/Goal", json=addressed, timeout=30)
        if base == fhir_medplum_url:
            assert refused(response) == (
                "HAPI-1094: Resource Condition/not-here not found, specified in path: Goal.addresses"
            )
        else:
            assert response.status_code == 201, response.text


# ---- deletes ----


@local_only
def test_deleting_a_referenced_resource_is_allowed_by_default(http, fhir_profile_url, subject):
    """As on Medplum, and on HAPI with `enforce_referential_integrity_on_delete: false`: the EHR-side deletes the
    sync tests model (a Goal a CarePlan still names, issue #13) stay possible."""
    create(http, fhir_profile_url, goal(subject))
    assert http.delete(f"{fhir_profile_url}/{subject}", timeout=30).status_code == 200


STRICT_DELETE = ["--referential-integrity-on-delete"]


@pytest.fixture(scope="module")
def strict_delete_url() -> Iterator[str]:
    """A local server of its own, started with --referential-integrity-on-delete (HAPI's default)."""
    with LocalFhirServer(profile="hapi", options=STRICT_DELETE) as server:
        yield server.base_url


def test_with_the_option_deleting_a_referenced_resource_is_refused_with_409_hapi_0550(http, strict_delete_url):
    base = strict_delete_url
    who = create(http, base, patient(unique()))
    named = create(http, base, goal(f"Patient/{who['id']}"))
    response = http.delete(f"{base}/Patient/{who['id']}", timeout=30)
    assert refused(response, 409) == (
        f"HAPI-0550: HAPI-0515: Unable to delete Patient/{who['id']} because at least one resource has a reference "
        f"to this resource. First reference found was resource Goal/{named['id']} in path Goal.subject"
    )
    assert http.get(f"{base}/Patient/{who['id']}", timeout=30).status_code == 200

    # In a transaction the conflict is judged on its final state: deleting the Goal too makes the delete fine.
    both = transaction(
        {"request": {"method": "DELETE", "url": f"Patient/{who['id']}"}},
        {"request": {"method": "DELETE", "url": f"Goal/{named['id']}"}},
    )
    response = http.post(base, json=both, timeout=30)
    assert response.status_code == 200, response.text
    assert http.get(f"{base}/Patient/{who['id']}", timeout=30).status_code == 410


def test_with_the_option_a_transaction_deleting_a_referenced_resource_keeps_nothing(http, strict_delete_url):
    base = strict_delete_url
    who = create(http, base, patient(unique()))
    create(http, base, goal(f"Patient/{who['id']}"))
    other = create(http, base, patient(unique()))
    bundle = transaction(
        {"request": {"method": "DELETE", "url": f"Patient/{other['id']}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{who['id']}"}},
    )
    response = http.post(base, json=bundle, timeout=30)
    assert "HAPI-0515: Unable to delete" in refused(response, 409)
    assert http.get(f"{base}/Patient/{other['id']}", timeout=30).status_code == 200, "the transaction kept a delete"


# ---- absolute references ----

ELSEWHERE = "https://other.example/fhir"


def external_refusal(reference: str) -> str:
    return (
        f'HAPI-0507: Resource contains external reference to URL "{reference}" but this server is not configured '
        "to allow external references"
    )


def medplum_refusal(response: requests.Response, path: str) -> None:
    """Assert Medplum's refusal of a reference it cannot read as `Type/id` (checkReferencesOnWrite)."""
    assert response.status_code == 400, response.text
    (issue,) = response.json()["issue"]
    assert (issue["severity"], issue["code"]) == ("error", "structure"), issue
    assert issue["details"]["text"] == "Invalid reference (Invalid reference)" and issue["expression"] == [path]


@local_only
def test_the_hapi_profile_refuses_a_reference_to_another_server_with_hapi_0507(http, fhir_hapi_url):
    """Bug fixed: both profiles stored `https://other.example/fhir/Patient/<id>`, which HAPI (by default) refuses,
    so a push naming another server's Patient passed against the local server and failed against HAPI. Its id
    is one of ours on purpose: the reference still names the other server's Patient."""
    who = f"Patient/{create(http, fhir_hapi_url, patient(unique()))['id']}"
    value = unique()
    external = f"{ELSEWHERE}/{who}"
    response = http.post(f"{fhir_hapi_url}/Goal", json=goal(external, value), timeout=30)
    assert refused(response) == external_refusal(external)
    assert count(http, fhir_hapi_url, "Goal", value) == 0
    # in a transaction too, which then keeps nothing
    bundle = transaction(post(patient(value), f"urn:uuid:{uuid.uuid4()}"), post(goal(external)))
    response = http.post(fhir_hapi_url, json=bundle, timeout=30)
    assert refused(response) == external_refusal(external)
    assert count(http, fhir_hapi_url, "Patient", value) == 0


@local_only
def test_the_hapi_profile_stores_an_external_reference_on_a_path_it_does_not_index(http, fhir_hapi_url):
    """HAPI looks at the references of its resource links only (reference search parameters): `Goal.addresses`
    is on none, so an absolute reference there is stored as it is."""
    who = f"Patient/{create(http, fhir_hapi_url, patient(unique()))['id']}"
    external = f"{ELSEWHERE}/Condition/c1"
    created = create(http, fhir_hapi_url, goal(who, addresses=[{"reference": external}]))
    assert created["addresses"] == [{"reference": external}]


@local_only
def test_the_hapi_profile_makes_a_reference_on_its_own_base_relative(http, fhir_hapi_url):
    """HAPI reads a request's resources with its server base set: `[base]/Patient/1` is stored as `Patient/1`, and
    checked as it (a missing one is HAPI-1094), in a transaction's entries too."""
    who = f"Patient/{create(http, fhir_hapi_url, patient(unique()))['id']}"
    created = create(http, fhir_hapi_url, goal(f"{fhir_hapi_url}/{who}"))
    assert created["subject"] == {"reference": who}
    versioned = create(http, fhir_hapi_url, goal(f"{fhir_hapi_url}/{who}/_history/1"))
    assert versioned["subject"] == {"reference": f"{who}/_history/1"}
    response = http.post(f"{fhir_hapi_url}/Goal", json=goal(f"{fhir_hapi_url}/Patient/nobody"), timeout=30)
    assert refused(response) == "HAPI-1094: Resource Patient/nobody not found, specified in path: Goal.subject"
    value = unique()
    bundle = transaction(post(goal(f"{fhir_hapi_url}/{who}", value)))
    assert http.post(fhir_hapi_url, json=bundle, timeout=30).status_code == 200
    found = http.get(f"{fhir_hapi_url}/Goal", params={"identifier": f"{SYSTEM}|{value}"}, timeout=30).json()
    (stored,) = found["entry"]
    assert stored["resource"]["subject"] == {"reference": who}


@local_only
def test_the_medplum_profile_refuses_every_absolute_reference(http, fhir_medplum_url):
    """Medplum's `checkReferencesOnWrite` reads a reference as `Type/id` (`readReference`): an absolute one, on
    another server or on its own base, on any path, is `Invalid reference`."""
    who = f"Patient/{create(http, fhir_medplum_url, patient(unique()))['id']}"
    for reference in (f"{ELSEWHERE}/{who}", f"{fhir_medplum_url}/{who}"):
        value = unique()
        response = http.post(f"{fhir_medplum_url}/Goal", json=goal(reference, value), timeout=30)
        medplum_refusal(response, "Goal.subject")
        assert count(http, fhir_medplum_url, "Goal", value) == 0
    addressed = goal(who, addresses=[{"reference": f"{ELSEWHERE}/Condition/c1"}])
    medplum_refusal(http.post(f"{fhir_medplum_url}/Goal", json=addressed, timeout=30), "Goal.addresses")


ALLOW_EXTERNAL = ["--allow-external-references"]


def own_server(profile: str, *options: str) -> Iterator[str]:
    """A local server of its own, started with `options`; yields its base URL."""
    with LocalFhirServer(profile=profile, options=options) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def external_url() -> Iterator[str]:
    """A hapi-profile server started with --allow-external-references (HAPI's `allow_external_references`)."""
    yield from own_server("hapi", *ALLOW_EXTERNAL)


def test_with_the_option_an_external_reference_is_stored_as_it_is(http, external_url):
    who = f"Patient/{create(http, external_url, patient(unique()))['id']}"
    external = f"{ELSEWHERE}/{who}"  # our Patient's id, on another server: not ours, stored as it came
    created = create(http, external_url, goal(external))
    assert created["subject"] == {"reference": external}
    own = create(http, external_url, goal(f"{external_url}/{who}"))
    assert own["subject"] == {"reference": who}  # one on its own base is still made relative
