"""The EHR's own resources that the fixture plans name by literal reference, put on a test FHIR server.

The fixture plans come from an EHR that holds more than the plan: a goal `addresses` `Condition/tkr-r-2026`, a
team member is `Practitioner/gp-4411`. planbridge writes those references back as they came, and a server that
enforces referential integrity (HAPI by default, `HAPI-1094`; Medplum with `checkReferencesOnWrite`; the local
server in both profiles) refuses a write naming a resource it does not hold. So every test server gets them
once, with the fixtures' ids (client-assigned ids are non-numeric, which HAPI and the local server accept).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import requests

FIXTURE_PLANS = Path(__file__).resolve().parent.parent / "fixtures" / "plans"
EHR_PATIENT = "fixture-ehr-patient"  # the subject of the seeded Conditions
# planbridge writes its own Patient, CarePlan, CareTeam, Goals and Observations; anything else is the EHR's
_LITERAL = re.compile(r"^(Condition|Practitioner|PractitionerRole|Organization)/([A-Za-z0-9\-.]{1,64})$")


@functools.cache
def ehr_references() -> tuple[tuple[str, str], ...]:
    """Return the (type, id) of every EHR resource a fixture plan names by a literal reference."""
    found: set[tuple[str, str]] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                if key in ("reference", "fhir_reference") and isinstance(child, str):
                    if match := _LITERAL.match(child):
                        found.add((match.group(1), match.group(2)))
                else:
                    walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    for path in sorted(FIXTURE_PLANS.glob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return tuple(sorted(found))


def seed_ehr_world(base_url: str) -> None:
    """Create (or update) the EHR resources the fixture plans name, on the FHIR server at base_url."""
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    with requests.Session() as http:
        http.headers.update(headers)
        wanted = [("Patient", EHR_PATIENT), *ehr_references()]
        for resource_type, resource_id in wanted:
            body: dict[str, object] = {"resourceType": resource_type, "id": resource_id}
            if resource_type == "Condition":
                body["subject"] = {"reference": f"Patient/{EHR_PATIENT}"}
            response = http.put(f"{base_url}/{resource_type}/{resource_id}", json=body, timeout=30)
            response.raise_for_status()
