"""Every plan fixture, as planbridge's transaction Bundle, on a strictly validating FHIR R4 server.

Each test gets its own identifier base and MRN, so runs never see each other's resources. Sending
the same Bundle twice must change nothing: every entry is conditional on an identifier.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import requests

from mappings import codes
from mappings.bundle import plan_to_bundle
from service.domain import codec
from service.domain.model import Plan
from tests.support import FIXTURES, MRN_SYSTEM

FHIR_JSON = "application/fhir+json"
PLAN_FILES = sorted((FIXTURES / "plans").glob("*.json"))


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        session.headers.update({"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
        yield session


@pytest.fixture(scope="module")
def fhir_base_url(request) -> str:
    """A server without transaction caps ($FHIR_TEST_SERVER_URL, else the local server's hapi profile): each plan
    goes as one whole Bundle here, and the medplum profile refuses one with more than 8 conditional entries
    (tests/integration/test_server_profiles.py); pushes split theirs to fit."""
    external = os.environ.get("FHIR_TEST_SERVER_URL")
    return external.rstrip("/") if external else request.getfixturevalue("fhir_hapi_url")


def fresh_plan(path: Path) -> tuple[Plan, str]:
    plan = codec.from_dict(Plan, json.loads(path.read_text()))
    plan.patient.mrn = f"MRN-{uuid.uuid4().hex[:12]}"
    return plan, f"https://planbridge.test/{uuid.uuid4().hex}/id"


def post_transaction(http: requests.Session, base_url: str, bundle: dict) -> dict:
    response = http.post(base_url, data=json.dumps(bundle), timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction-response"
    assert len(body["entry"]) == len(bundle["entry"])
    return body


def identifier_of(entry: dict) -> tuple[str, str]:
    """Return (resource type, `system|value`) of the identifier a transaction entry is conditional on."""
    request = entry["request"]
    condition = request["ifNoneExist"] if request["method"] == "POST" else request["url"].split("?", 1)[1]
    (name, value), *_ = parse_qsl(condition)
    assert name == "identifier"
    return entry["resource"]["resourceType"], value


def search(http: requests.Session, base_url: str, rtype: str, identifier: str) -> list[dict]:
    response = http.get(f"{base_url}/{rtype}", params={"identifier": identifier}, timeout=30)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e.get("search", {}).get("mode") != "outcome"]


@pytest.mark.parametrize("path", PLAN_FILES, ids=[p.stem for p in PLAN_FILES])
def test_plan_bundle_is_accepted_idempotent_and_linked(http, fhir_base_url, path):
    plan, base = fresh_plan(path)
    bundle = plan_to_bundle(plan, base, MRN_SYSTEM, patient_ref=None)

    first = post_transaction(http, fhir_base_url, bundle)
    statuses = [e["response"]["status"].split()[0] for e in first["entry"]]
    assert statuses[0] == "201"  # the Patient, new by its fresh MRN
    assert set(statuses) <= {"200", "201"}

    second = post_transaction(http, fhir_base_url, bundle)
    assert all(e["response"]["status"].split()[0] == "200" for e in second["entry"]), second
    for entry in bundle["entry"]:
        rtype, identifier = identifier_of(entry)
        found = search(http, fhir_base_url, rtype, identifier)
        assert len(found) == 1, f"{rtype}?identifier={identifier} matched {len(found)}"

    (careplan,) = search(http, fhir_base_url, "CarePlan", f"{codes.identifier_system(base, 'plan')}|{plan.id}")
    goal_system = codes.identifier_system(base, "goal")
    expected = [codes.goal_identifier_value(plan.id, g.id) for g in plan.goals]
    seen = []
    for ref in careplan.get("goal", []):
        assert ref["reference"].startswith("Goal/"), ref  # urn:uuid rewritten to the server's id
        response = http.get(f"{fhir_base_url}/{ref['reference']}", timeout=30)
        assert response.status_code == 200, response.text
        goal = response.json()
        assert goal["subject"] == careplan["subject"]
        seen += [i["value"] for i in goal["identifier"] if i["system"] == goal_system]
    assert seen == expected
    patient = http.get(f"{fhir_base_url}/{careplan['subject']['reference']}", timeout=30).json()
    assert {"system": MRN_SYSTEM, "value": plan.patient.mrn} in patient["identifier"]
