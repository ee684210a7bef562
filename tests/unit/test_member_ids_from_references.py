"""A team member read from FHIR gets an id a team event can name (a FHIR id), whatever the reference looks like.

A transaction Bundle (Synthea's shape) names its Practitioner `urn:uuid:…`: the member was `practitioner-urn:uuid:…`,
an id no team event could name and which `plans import` (and `validate`) refuse; a conditional reference made
`practitioner-Practitioner?identifier=…|…`."""

from __future__ import annotations

import re

import pytest

from mappings.refs import Resolver
from service.settings import Settings

SETTINGS = Settings.from_env({})
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Practitioner/pr9", "practitioner-pr9"),  # as before
        ("urn:uuid:9b2f4c1e-0000-4000-8000-000000000001", "practitioner-9b2f4c1e-0000-4000-8000-000000000001"),
        ("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1093817465", None),
        ("https://ehr.example/fhir/Practitioner/7", "practitioner-7"),
        ("#pr", "practitioner-pr"),
        ("urn:oid:1.2.3", "practitioner-1.2.3"),
        ("::::", "practitioner-anonymous"),
    ],
)
def test_a_member_read_from_any_reference_has_a_fhir_id(reference: str, expected: str | None) -> None:
    resolver = Resolver({}, "Patient/1", SETTINGS.identifier_base)
    member_id = resolver._member_id("Practitioner", reference, None)
    assert FHIR_ID.fullmatch(member_id), member_id
    if expected is not None:
        assert member_id == expected
