"""Properties every valid plan has: it survives the plan JSON, a FHIR Bundle, and FHIR validation."""

import dataclasses
import json

from hypothesis import HealthCheck, given, settings

from mappings.bundle import bundle_to_plan, plan_to_bundle
from mappings.fhir import validate_bundle
from service.domain import codec
from service.domain.model import Plan
from service.domain.rules import check_plan, errors
from tests.strategies import plans

BASE = "https://planbridge.example.org/id"
MRN = "http://hospital.example.org/mrn"

settings.register_profile("properties", max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPERTIES = settings.get_profile("properties")


@PROPERTIES
@given(plans())
def test_plan_json_round_trips(plan):
    assert errors(check_plan(plan)) == []  # the strategy's promise: every plan it makes is valid
    data = json.loads(json.dumps(codec.to_dict(plan)))
    assert codec.from_dict(Plan, data) == plan


@PROPERTIES
@given(plans())
def test_plan_round_trips_through_a_fhir_bundle(plan):
    bundle = json.loads(json.dumps(plan_to_bundle(plan, BASE, MRN)))
    back = bundle_to_plan(bundle, BASE, MRN)
    assert back == dataclasses.replace(plan, version=back.version, updated_at=back.updated_at)


@PROPERTIES
@given(plans())
def test_every_bundle_of_a_valid_plan_is_valid_fhir(plan):
    validate_bundle(plan_to_bundle(plan, BASE, MRN))
