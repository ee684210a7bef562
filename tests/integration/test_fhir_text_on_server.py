"""`validate_bundle` refuses every text the strict FHIR server refuses, and the event schemas refuse it first.

Each case puts one value in one element of a small plan's Bundle and sends it to the local FHIR server
(fhir-server/, Medplum's validator): whatever the server refuses, `validate_bundle` must refuse too, or
the push would fail for ever on a plan planbridge accepted. Where planbridge is stricter (a lone
surrogate, U+0085 alone) the server is not asked to agree.
"""

import copy
import json
import uuid

import pytest
import requests
from marshmallow import ValidationError

from mappings.bundle import plan_to_bundle
from mappings.fhir import validate_bundle
from service.api.schemas.common import CODE, TEXT, URI
from service.domain import codec
from service.domain.errors import MappingError
from service.domain.model import Plan
from tests.support import FIXTURES, MRN_SYSTEM

PLAN = json.loads((FIXTURES / "plans" / "minimal.json").read_text())
STRINGS = ["walk\x00", "walk\x01more", "\x0b", "a\x1f", "\x1c", " ", "\u00a0", "\u3000", "\u2028", "\ufeff"]
STRINGS += ["\u00a0\ufeff", "a\x7f", "tab\there", "CR\r\nLF", "walk\n", "\u200b", "🚶", "a\ufeff"]
CODES = ["a  b", " a", "a\n", "a\u00a0b", "a\u3000b", "a\tb", "a b", "a\x01"]
URIS = ["not a uri", "http://x\n", "http://x\u00a0y", "http://x\ufeffy", "http://x\u2028y", "http://x\x01", "urn:x"]


def _bundle(where: str, value: str) -> dict:
    doc = copy.deepcopy(PLAN)
    doc["id"], doc["patient"]["mrn"] = f"p-{uuid.uuid4().hex[:10]}", f"MRN-{uuid.uuid4().hex[:10]}"
    coding = doc["team"][1]["role"]["codings"][0]
    {"text": lambda: doc["goals"][0]["description"].update(text=value), "code": lambda: coding.update(code=value)}.get(
        where, lambda: coding.update(system=value)
    )()
    return plan_to_bundle(codec.from_dict(Plan, doc), "https://planbridge.test/text/id", MRN_SYSTEM)


def _valid(bundle: dict) -> bool:
    try:
        validate_bundle(bundle)
    except MappingError:
        return False
    return True


def _schema_takes(validators, value: str) -> bool:
    try:
        for validator in validators if isinstance(validators, list) else [validators]:
            validator(value)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("where", "value", "schema"),
    [("text", s, TEXT) for s in STRINGS] + [("code", c, CODE) for c in CODES] + [("system", u, URI) for u in URIS],
)
def test_what_the_server_refuses_planbridge_refuses_first(fhir_base_url, where, value, schema):
    bundle = _bundle(where, value)
    answer = requests.post(fhir_base_url, json=bundle, headers={"Content-Type": "application/fhir+json"}, timeout=30)
    assert answer.status_code in (200, 400), answer.text[:300]
    if answer.status_code == 400:
        assert not _valid(bundle), f"the server refuses {value!r} in {where}: {answer.text[:300]}"
    assert _schema_takes(schema, value) == _valid(bundle)  # the door and the backstop agree
