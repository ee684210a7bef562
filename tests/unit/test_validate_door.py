"""`planbridge validate` says what `plans import` would refuse: the rules team events are held to (plan_door)
are among its issues, for plan JSON and for a Bundle around one CarePlan."""

from __future__ import annotations

import json

import pytest

from mappings.bundle import plan_to_bundle
from service.convert import validate
from service.domain import codec
from service.domain.model import Plan
from service.domain.rules import errors
from service.settings import Settings
from tests.support import FIXTURES

MINIMAL = json.loads((FIXTURES / "plans" / "minimal.json").read_text())
SETTINGS = Settings.from_env({})


def _plan(**changes: object) -> dict:
    plan = json.loads(json.dumps(MINIMAL))
    plan.update(changes)
    return plan


def test_a_plan_fit_for_import_validates_clean() -> None:
    assert errors(validate(_plan(), SETTINGS)) == []


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"id": "pa/x"}, "id"),  # identifiers {plan id}/{goal id} would collide with plan `pa`'s goal `x/...`
        ({"title": "t" * 201}, "title"),
    ],
)
def test_plan_json_that_import_refuses_does_not_validate(changes: dict, path: str) -> None:
    found = errors(validate(_plan(**changes), SETTINGS))
    assert path in [issue.path for issue in found], found


def test_a_bundle_whose_plan_import_refuses_does_not_validate() -> None:
    plan = codec.from_dict(Plan, _plan())
    plan.patient.mrn = "A|B"  # Medplum splits a token at `|`: a new Patient on every push
    bundle = plan_to_bundle(plan, SETTINGS.identifier_base, SETTINGS.mrn_system)
    found = errors(validate(bundle, SETTINGS))
    assert any(issue.path == "patient.mrn" for issue in found), found
