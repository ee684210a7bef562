"""The plan door (service/services/plan_door.py): a whole plan is held to the rules its team events are held to."""

import json

import pytest

from service.convert import from_fhir, load_plan
from service.domain import codec
from service.domain.model import Plan
from service.services.plan_door import door_issues
from service.settings import Settings
from tests.support import FIXTURES

PLANS = sorted((FIXTURES / "plans").glob("*.json"))
BUNDLES = sorted((FIXTURES / "fhir").rglob("*.json"))


def _plan(change=None) -> Plan:
    document = json.loads((FIXTURES / "plans" / "gas-rehab.json").read_text())
    if change is not None:
        change(document)
    return load_plan(document)[0]


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_every_plan_fixture_passes_the_door(path):
    assert door_issues(load_plan(json.loads(path.read_text()))[0]) == []


@pytest.mark.parametrize("path", BUNDLES, ids=[p.stem for p in BUNDLES])
def test_every_ehr_bundle_fixture_passes_the_door(path):
    plan = codec.from_dict(Plan, from_fhir(json.loads(path.read_text()), Settings())[0])
    assert door_issues(plan) == []


def _rating_twin(document: dict) -> None:
    goal = next(g for g in document["goals"] if g.get("ratings"))
    twin = dict(goal["ratings"][0], id=goal["ratings"][0]["id"].swapcase())
    goal["ratings"].append(twin)


def _weight(document: dict) -> None:
    document["goals"][0]["gas_weight"] = 1001


def _unit(document: dict) -> None:
    document["review_every"] = {"value": 2, "unit": "fortnight"}


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (_rating_twin, "ratings[", "only in case"),
        (_weight, "goals[0].gas_weight", "1000"),
        (_unit, "review_every.unit", "Must be one of"),
    ],
    ids=["rating-id-twin", "gas-weight-over-1000", "review-unit"],
)
def test_the_door_names_what_an_event_could_not_carry(change, path, words):
    issues = door_issues(_plan(change))
    assert any(path in issue.path and words in issue.message for issue in issues), issues
