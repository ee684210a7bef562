"""The local FHIR server's profiles: `medplum` (the default) has Medplum 5.2.13's transaction caps and answers a
stale If-Match with 412; `hapi` has no caps and answers 409 HAPI-0989. Everything else is the same HAPI-like
server (tests/integration/test_local_fhir_server.py)."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import requests

from service.devfhir import PROFILES, SERVER_DIR, LocalFhirServer, default_profile
from service.fhir.capabilities import TRANSACTION_LIMITS_URL, Limits, server_limits

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("FHIR_TEST_SERVER_URL")), reason="the local server's profiles, not an external server"
)
SYSTEM = "urn:planbridge:test:profiles"
STRICT = "Transaction requires strict isolation but has too many entries"
UPDATES = "Transaction contains more update operations than allowed"


def refusal(text: str, code: str = "invalid") -> dict:
    """The OperationOutcome the server sends for Medplum's refusals: core's badRequest, with HAPI-style diagnostics."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "details": {"text": text}, "diagnostics": text}],
    }


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        session.headers.update({"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
        yield session


def basic(value: str) -> dict:
    return {"resourceType": "Basic", "identifier": [{"system": SYSTEM, "value": value}], "code": {"text": "probe"}}


def post_transaction(http, base: str, entries: list[dict]) -> requests.Response:
    return http.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries})


def count(http, base: str, values: list[str]) -> int:
    found = http.get(f"{base}/Basic", params={"identifier": ",".join(f"{SYSTEM}|{v}" for v in values)})
    assert found.status_code == 200, found.text
    return found.json()["total"]


def plain_creates(n: int) -> tuple[list[str], list[dict]]:
    values = [uuid.uuid4().hex for _ in range(n)]
    return values, [{"resource": basic(v), "request": {"method": "POST", "url": "Basic"}} for v in values]


def conditional_entry(kind: str, http, base: str) -> tuple[str, dict]:
    """One conditional entry; "... of an existing one" first creates the resource its search matches."""
    value = uuid.uuid4().hex
    if kind.endswith("of an existing one"):
        assert http.post(f"{base}/Basic", json=basic(value)).status_code == 201
    if kind.startswith("conditional create"):
        request = {"method": "POST", "url": "Basic", "ifNoneExist": f"identifier={SYSTEM}|{value}"}
        return value, {"resource": basic(value), "request": request}
    if kind.startswith("conditional update"):
        request = {"method": "PUT", "url": f"Basic?identifier={SYSTEM}|{value}"}
        return value, {"resource": basic(value), "request": request}
    return value, {"request": {"method": "DELETE", "url": f"Basic?identifier={SYSTEM}|{value}"}}


# Medplum 5.2.13's BatchProcessor resolves a conditional PUT/DELETE that matches one resource to `Type/id`
# before it decides whether the transaction needs strict isolation: only a conditional create (whether or not
# it matches), and a conditional update or delete that matches nothing, make it strict.
STRICT_KINDS = {
    "conditional create": True,
    "conditional create of an existing one": True,
    "conditional update": True,
    "conditional update of an existing one": False,
    "conditional delete": True,
    "conditional delete of an existing one": False,
}


@pytest.mark.parametrize("kind", list(STRICT_KINDS))
def test_nine_entries_with_a_conditional_one_are_refused_on_medplum_as_medplum_does_and_taken_on_hapi(
    http, fhir_profile, fhir_profile_url, kind
):
    base = fhir_profile_url
    value, conditional = conditional_entry(kind, http, base)
    values, creates = plain_creates(8)
    before = count(http, base, [value])

    answer = post_transaction(http, base, [conditional, *creates])

    if fhir_profile == "medplum" and STRICT_KINDS[kind]:
        assert answer.status_code == 400
        assert answer.json() == refusal(STRICT)
        assert count(http, base, values) == 0 and count(http, base, [value]) == before  # nothing kept
        assert post_transaction(http, base, [conditional, *creates[:7]]).status_code == 200  # 8 entries are fine
        assert count(http, base, values[:7]) == 7
    else:
        assert answer.status_code == 200, answer.text
        assert count(http, base, values) == 8


def test_a_large_transaction_without_conditional_entries_is_taken_by_both(http, fhir_profile_url):
    values, creates = plain_creates(60)
    assert post_transaction(http, fhir_profile_url, creates).status_code == 200
    assert count(http, fhir_profile_url, values) == 60


def test_fifty_one_updates_are_refused_on_medplum_and_taken_on_hapi(http, fhir_profile, fhir_profile_url):
    base = fhir_profile_url
    values, creates = plain_creates(51)
    made = post_transaction(http, base, creates)
    assert made.status_code == 200, made.text
    ids = [e["response"]["location"].split("/")[1] for e in made.json()["entry"]]
    updates = [
        {
            "resource": {**basic(v), "id": i, "code": {"text": "updated"}},
            "request": {"method": "PUT", "url": f"Basic/{i}"},
        }
        for v, i in zip(values, ids, strict=True)
    ]

    answer = post_transaction(http, base, updates)

    if fhir_profile == "medplum":
        assert answer.status_code == 400
        assert answer.json() == refusal(UPDATES)
        assert http.get(f"{base}/Basic/{ids[0]}").json()["meta"]["versionId"] == "1"  # nothing applied
        assert post_transaction(http, base, updates[:50]).status_code == 200
        assert http.get(f"{base}/Basic/{ids[49]}").json()["code"]["text"] == "updated"
    else:
        assert answer.status_code == 200, answer.text
        assert http.get(f"{base}/Basic/{ids[50]}").json()["code"]["text"] == "updated"


def test_a_stale_if_match_is_412_on_medplum_and_409_on_hapi_alone_and_in_a_transaction(
    http, fhir_profile, fhir_profile_url
):
    base = fhir_profile_url
    created = http.post(f"{base}/Basic", json=basic(uuid.uuid4().hex)).json()
    url = f"{base}/Basic/{created['id']}"
    assert http.put(url, json=created, headers={"If-Match": 'W/"1"'}).status_code == 200

    stale = http.put(url, json=created, headers={"If-Match": 'W/"1"'})
    entry = {"resource": created, "request": {"method": "PUT", "url": f"Basic/{created['id']}", "ifMatch": 'W/"1"'}}
    in_transaction = post_transaction(http, base, [entry])

    if fhir_profile == "medplum":
        expected = (412, refusal("Precondition Failed", "processing"))
    else:
        text = f"HAPI-0989: Trying to update Basic/{created['id']}/_history/1 but this is not the current version"
        expected = (409, refusal(text, "processing"))
    assert (stale.status_code, stale.json()) == expected
    assert (in_transaction.status_code, in_transaction.json()) == expected
    assert http.get(url).json()["meta"]["versionId"] == "2"


def test_the_capability_statement_names_the_profile_and_publishes_medplum_limits(http, fhir_profile, fhir_profile_url):
    statement = http.get(f"{fhir_profile_url}/metadata").json()

    assert f"{fhir_profile} profile" in statement["software"]["name"]
    limits = [e for e in statement["rest"][0].get("extension", []) if e["url"] == TRANSACTION_LIMITS_URL]
    if fhir_profile == "medplum":
        assert limits == [
            {
                "url": TRANSACTION_LIMITS_URL,
                "extension": [
                    {"url": "maxStrictEntries", "valueInteger": 8},
                    {"url": "maxUpdates", "valueInteger": 50},
                ],
            }
        ]
        assert server_limits(statement) == Limits(max_strict_entries=8, max_updates=50)
    else:
        assert limits == [] and server_limits(statement) == Limits()


def test_server_limits_ignores_malformed_extensions():
    ext = {"url": TRANSACTION_LIMITS_URL, "extension": [{"url": "maxStrictEntries", "valueInteger": "8"}, "x"]}
    assert server_limits({"rest": [{"extension": [ext, 3]}, "junk"]}) == Limits()
    assert server_limits({}) == Limits() and server_limits({"rest": None}) == Limits()


def test_the_profile_comes_from_the_argument_then_the_environment_then_medplum(monkeypatch):
    monkeypatch.delenv("PLANBRIDGE_FHIR_PROFILE", raising=False)
    assert default_profile() == "medplum" and LocalFhirServer().profile == "medplum"
    monkeypatch.setenv("PLANBRIDGE_FHIR_PROFILE", "hapi")
    assert LocalFhirServer().profile == "hapi" and LocalFhirServer(profile="medplum").profile == "medplum"
    monkeypatch.setenv("PLANBRIDGE_FHIR_PROFILE", "firely")
    with pytest.raises(RuntimeError, match="PLANBRIDGE_FHIR_PROFILE='firely' is not a local FHIR server profile"):
        LocalFhirServer()
    with pytest.raises(ValueError, match="unknown local FHIR server profile 'firely'"):
        LocalFhirServer(profile="firely")
    assert PROFILES == ("medplum", "hapi")


def test_the_server_refuses_an_unknown_profile_on_its_command_line():
    done = subprocess.run(
        ["node", "server.mjs", "--profile", "firely"], cwd=SERVER_DIR, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "invalid --profile firely (use medplum or hapi)" in done.stderr
