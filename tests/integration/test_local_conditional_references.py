"""Conditional references on the local FHIR server: resolved on write, as the real server of each profile does.

A reference may be a search, `Patient?identifier=system|value` (https://hl7.org/fhir/R4/http.html#trules,
"conditional references"): the server replaces it with `Patient/<id>` of the one resource the search matches,
and refuses the write when none or several match. Both real servers do so on every write, in a transaction or
not, and the local server now does too (`lib/repo.mjs` `resolveConditionalReferences`); before, its Medplum core
stored the search text as the reference.

- `hapi`, as HAPI's JPA server (`allow_inline_match_url_references`, on by default): the reference becomes
  `Type/id`, the rest of the Reference (its `display`) is kept; none: **404** `HAPI-1091: Invalid match URL "..." -
  No resources match this search`; several: **412** `HAPI-1092: ... - Multiple resources match this search`; an
  unknown type: **400** `HAPI-1090`.
- `medplum`, as Medplum's `replaceConditionalReferences`: the Reference is replaced by core's `createReference` of
  the match (`reference` and `display`); none or several: **400** `invalid`, `Conditional reference '...' did not
  match any resources` / `matched multiple resources`, with the element's path as `expression`.

A refused transaction keeps nothing; in a batch only the entry fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
SYSTEM = "http://hospital.example/mrn"  # a system with slashes, as a real MRN system has
NPI = "http://hl7.org/fhir/sid/us-npi"


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(HEADERS)
        yield session


def unique() -> str:
    return uuid.uuid4().hex[:12]


def create(http: requests.Session, base: str, resource: dict) -> dict:
    response = http.post(f"{base}/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return response.json()


def patient(http: requests.Session, base: str, mrn: str, family: str = "Doe") -> dict:
    return create(
        http,
        base,
        {
            "resourceType": "Patient",
            "identifier": [{"system": SYSTEM, "value": mrn}],
            "name": [{"family": family, "given": ["Jane"]}],
        },
    )


def goal(subject: dict, marker: str) -> dict:
    return {
        "resourceType": "Goal",
        "identifier": [{"system": "urn:planbridge:test:condref", "value": marker}],
        "lifecycleStatus": "active",
        "description": {"text": "Walk 30 minutes a day"},
        "subject": subject,
    }


def transaction(http: requests.Session, base: str, *entries: dict, kind: str = "transaction") -> requests.Response:
    return http.post(base, json={"resourceType": "Bundle", "type": kind, "entry": list(entries)})


def post(resource: dict) -> dict:
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def goals_marked(http: requests.Session, base: str, marker: str) -> list[dict]:
    page = http.get(f"{base}/Goal", params={"identifier": f"urn:planbridge:test:condref|{marker}"}).json()
    return [e["resource"] for e in page.get("entry", [])]


def only_issue(response: requests.Response) -> dict:
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and len(outcome["issue"]) == 1, outcome
    return outcome["issue"][0]


def test_a_conditional_reference_in_a_transaction_is_stored_as_the_one_match(http, fhir_profile_url, fhir_profile):
    mrn, marker = unique(), unique()
    patient(http, fhir_profile_url, unique(), family="Other")  # a Patient the search must not pick
    jane = patient(http, fhir_profile_url, mrn)
    conditional = f"Patient?identifier={SYSTEM}|{mrn}"

    answer = transaction(http, fhir_profile_url, post(goal({"reference": conditional, "display": "as sent"}, marker)))

    assert answer.status_code == 200, answer.text
    [stored] = goals_marked(http, fhir_profile_url, marker)
    assert stored["subject"]["reference"] == f"Patient/{jane['id']}"
    # HAPI sets the reference and keeps the rest; Medplum puts core's createReference of the match in its place
    expected_display = "Jane Doe" if fhir_profile == "medplum" else "as sent"
    assert stored["subject"]["display"] == expected_display
    # and a search by the resolved reference finds it (the server indexed the literal reference)
    found = http.get(f"{fhir_profile_url}/Goal", params={"subject": f"Patient/{jane['id']}"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [stored["id"]]


def test_a_conditional_reference_is_resolved_outside_a_transaction_too(http, fhir_profile_url):
    mrn = unique()
    jane = patient(http, fhir_profile_url, mrn)

    stored = create(http, fhir_profile_url, goal({"reference": f"Patient/?identifier={SYSTEM}|{mrn}"}, unique()))

    assert stored["subject"]["reference"] == f"Patient/{jane['id']}"


def test_a_conditional_reference_matching_nothing_refuses_the_transaction(http, fhir_profile_url, fhir_profile):
    marker = unique()
    conditional = f"Patient?identifier={SYSTEM}|{unique()}"
    bystander = goal({"reference": f"Patient/{patient(http, fhir_profile_url, unique())['id']}"}, marker)

    answer = transaction(http, fhir_profile_url, post(bystander), post(goal({"reference": conditional}, marker)))

    issue = only_issue(answer)
    if fhir_profile == "medplum":
        assert answer.status_code == 400
        assert issue["code"] == "invalid"
        assert issue["details"]["text"] == f"Conditional reference '{conditional}' did not match any resources"
        assert issue["expression"] == ["Goal.subject"]
    else:
        assert answer.status_code == 404
        assert issue["code"] == "processing"
        assert issue["diagnostics"] == f'HAPI-1091: Invalid match URL "{conditional}" - No resources match this search'
    assert goals_marked(http, fhir_profile_url, marker) == []  # all or nothing: the bystander is not kept


def test_a_conditional_reference_matching_several_refuses_the_write(http, fhir_profile_url, fhir_profile):
    mrn, marker = unique(), unique()
    patient(http, fhir_profile_url, mrn)
    patient(http, fhir_profile_url, mrn)
    conditional = f"Patient?identifier={SYSTEM}|{mrn}"

    answer = transaction(http, fhir_profile_url, post(goal({"reference": conditional}, marker)))

    issue = only_issue(answer)
    if fhir_profile == "medplum":
        assert answer.status_code == 400
        assert issue["details"]["text"] == f"Conditional reference '{conditional}' matched multiple resources"
    else:
        assert answer.status_code == 412
        assert issue["diagnostics"] == (
            f'HAPI-1092: Invalid match URL "{conditional}" - Multiple resources match this search'
        )
    assert goals_marked(http, fhir_profile_url, marker) == []


def test_a_team_member_named_conditionally_is_the_practitioner_the_same_transaction_creates(http, fhir_profile_url):
    """planbridge's own shape: the Bundle creates the Practitioner if absent (conditional create), and the
    CareTeam names them by a search; the search sees what the transaction's earlier entries wrote."""
    npi, mrn = unique(), unique()
    jane = patient(http, fhir_profile_url, mrn)
    practitioner = {"resourceType": "Practitioner", "identifier": [{"system": NPI, "value": npi}]}
    careteam = {
        "resourceType": "CareTeam",
        "subject": {"reference": f"Patient?identifier={SYSTEM}|{mrn}"},
        "participant": [{"member": {"reference": f"Practitioner?identifier={NPI}|{npi}"}}],
    }
    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": practitioner,
            "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": f"identifier={NPI}|{npi}"},
        },
        post(careteam),
    ]

    answer = transaction(http, fhir_profile_url, *entries)

    assert answer.status_code == 200, answer.text
    created = answer.json()["entry"][0]["response"]["location"].split("/_history")[0]
    stored = http.get(f"{fhir_profile_url}/{answer.json()['entry'][1]['response']['location']}").json()
    assert stored["participant"][0]["member"]["reference"] == created
    assert stored["subject"]["reference"] == f"Patient/{jane['id']}"


def test_medplum_names_the_path_of_an_unresolved_team_member(http, fhir_medplum_url):
    conditional = f"Practitioner?identifier={NPI}|{unique()}"
    careteam = {"resourceType": "CareTeam", "participant": [{"member": {"reference": conditional}}]}

    answer = http.post(f"{fhir_medplum_url}/CareTeam", json=careteam)

    assert answer.status_code == 400
    issue = only_issue(answer)
    assert issue["expression"] == ["CareTeam.participant.member"]
    assert issue["diagnostics"] == (
        f"Conditional reference '{conditional}' did not match any resources (at CareTeam.participant.member)"
    )


def test_hapi_refuses_a_conditional_reference_to_an_unknown_type(http, fhir_hapi_url):
    answer = http.post(f"{fhir_hapi_url}/Goal", json=goal({"reference": "Patientt?identifier=a|b"}, unique()))

    assert answer.status_code == 400
    assert only_issue(answer)["diagnostics"] == (
        'HAPI-1090: Invalid match URL "Patientt?identifier=a|b" - Unknown resource type: "Patientt"'
    )


def test_in_a_batch_only_the_entry_naming_nothing_fails(http, fhir_profile_url, fhir_profile):
    mrn, marker = unique(), unique()
    jane = patient(http, fhir_profile_url, mrn)
    good = goal({"reference": f"Patient?identifier={SYSTEM}|{mrn}"}, marker)
    bad = goal({"reference": f"Patient?identifier={SYSTEM}|{unique()}"}, marker)

    answer = transaction(http, fhir_profile_url, post(good), post(bad), kind="batch")

    assert answer.status_code == 200, answer.text
    statuses = [e["response"]["status"] for e in answer.json()["entry"]]
    assert statuses[0].startswith("201")
    assert statuses[1].startswith("400" if fhir_profile == "medplum" else "404")
    [kept] = goals_marked(http, fhir_profile_url, marker)
    assert kept["subject"]["reference"] == f"Patient/{jane['id']}"
