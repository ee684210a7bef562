"""The plan JSON Schema: generated from the dataclasses, committed, and obeyed by every example plan."""

import copy
import json

import jsonschema
import pytest

from service.convert import dumps
from service.domain import model
from service.planschema import plan_schema, shape_issues
from tests.support import FIXTURES

COMMITTED = FIXTURES / "plan.schema.json"
PLANS = sorted((FIXTURES / "plans").glob("*.json"))
MINIMAL = json.loads((FIXTURES / "plans" / "minimal.json").read_text())


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(plan_schema())


def test_the_committed_schema_is_the_generated_one():
    assert COMMITTED.read_text() == dumps(plan_schema()) + "\n", (
        "fixtures/plan.schema.json is stale: regenerate it with `planbridge schema > fixtures/plan.schema.json`"
    )


def test_the_schema_is_a_valid_draft_2020_12_schema():
    schema = plan_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_schema_follows_the_dataclasses():
    schema = plan_schema()
    goal = schema["$defs"]["Goal"]
    assert schema["required"] == ["id", "patient"]
    assert goal["required"] == ["id", "description"]
    assert goal["additionalProperties"] is False
    assert goal["description"] == model.Goal.__doc__
    assert goal["properties"]["lifecycle_status"]["enum"] == list(model.GOAL_LIFECYCLE_STATUSES)
    assert schema["$defs"]["Agreement"]["properties"]["status"]["enum"] == [*model.AGREEMENT_STATUSES, None]
    assert schema["$defs"]["Quantity"]["properties"]["value"] == {"type": ["number", "null"]}
    assert schema["$defs"]["Target"]["properties"]["integer"] == {"type": ["integer", "null"]}
    assert schema["properties"]["careplan_extra"]["type"] == "object"
    assert schema["properties"]["team"] == {"type": "array", "items": {"$ref": "#/$defs/Member"}}


def test_there_are_example_plans():
    assert FIXTURES / "plans" / "minimal.json" in PLANS


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.name)
def test_every_example_plan_fits_the_schema(path):
    plan = json.loads(path.read_text())
    assert list(validator().iter_errors(plan)) == []
    assert shape_issues(plan) == []


def broken(change) -> dict:
    plan = copy.deepcopy(MINIMAL)
    change(plan)
    return plan


BROKEN = {
    "no id": (lambda p: p.pop("id"), "id"),
    "no patient mrn": (lambda p: p["patient"].pop("mrn"), "patient.mrn"),
    "an unknown key": (lambda p: p.update(owner="gp"), "owner"),
    "a FHIR resource": (lambda p: p.update(resourceType="CarePlan"), "resourceType"),
    "an unknown lifecycle status": (
        lambda p: p["goals"][0].update(lifecycle_status="done"),
        "goals[0].lifecycle_status",
    ),
    "an unknown member kind": (lambda p: p["team"][1].update(kind="nurse"), "team[1].kind"),
    "a description as a string": (lambda p: p["goals"][0].update(description="walk"), "goals[0].description"),
    "targets as an object": (lambda p: p["goals"][0].update(targets={}), "goals[0].targets"),
    "a quantity value as a string": (
        lambda p: p["goals"][0].update(targets=[{"measure": {"text": "kg"}, "quantity": {"value": "70"}}]),
        "goals[0].targets[0].quantity.value",
    ),
    "an unknown comparator": (
        lambda p: p.update(review_every={"value": 3, "comparator": "~", "unit": "mo"}),
        "review_every.comparator",
    ),
    "a boolean version": (lambda p: p.update(version=True), "version"),
    "fhir_extra as a list": (lambda p: p["team"][0].update(fhir_extra=[]), "team[0].fhir_extra"),
    "a null goal": (lambda p: p["goals"].append(None), "goals[1]"),
}


@pytest.mark.parametrize("change, path", BROKEN.values(), ids=BROKEN.keys())
def test_broken_plans_are_rejected_by_the_schema_and_named_by_path(change, path):
    plan = broken(change)
    assert list(validator().iter_errors(plan)), "jsonschema accepted a broken plan"
    assert path in [issue.path for issue in shape_issues(plan)]


def test_optional_fields_may_be_null_but_defaulted_ones_may_not():
    assert shape_issues(broken(lambda p: p.update(title=None))) == []
    assert not list(validator().iter_errors(broken(lambda p: p.update(title=None))))
    assert [i.path for i in shape_issues(broken(lambda p: p.update(status=None)))] == ["status"]
    assert list(validator().iter_errors(broken(lambda p: p.update(status=None))))
