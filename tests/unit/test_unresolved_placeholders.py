"""A `urn:uuid:` reference no entry of the Bundle resolves: never in a plan planbridge accepts, never in a Bundle it
sends. A FHIR server refuses such a transaction (HAPI-0541 "Unable to satisfy placeholder ID ... found in element
named 'addresses' within resource of type: Goal"), so a plan holding one would be accepted and never sync."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from mappings.bundle import bundle_to_plan, plan_to_bundle
from mappings.validate import unresolved_placeholders
from service.convert import ConversionRefused, from_fhir, to_fhir, validate
from service.domain import codec
from service.domain.errors import MappingError
from service.domain.model import CheckIn, Plan
from service.domain.types import Concept, Identifier, Ref
from service.services.deliverable import Undeliverable, check_deliverable
from service.settings import Settings
from service.store.db import create_engine
from service.store.uow import UnitOfWork
from tests.cli_support import run_planbridge

BASE = "https://planbridge.test/placeholders/id"
MRN = "http://hospital.example.org/mrn"
SETTINGS = Settings(identifier_base=BASE, mrn_system=MRN)
BIN = Path(sys.executable).parent / "planbridge"
FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures"
URN = {k: f"urn:uuid:4d2c8e10-0000-4000-8000-00000000000{i}" for i, k in enumerate("pcgxe", start=1)}
PREDIABETES = {
    "coding": [{"system": "http://snomed.info/sct", "code": "714628002", "display": "Prediabetes"}],
    "text": "Prediabetes",
}


def _synthea(condition: dict | None = None, request: dict | None = None, kind: str = "transaction") -> dict:
    """A transaction as Synthea writes one: every resource POSTed under a `urn:uuid:` fullUrl equal to its id, the
    Goal and the CarePlan addressing the Condition by that placeholder."""
    condition = condition if condition is not None else {"code": PREDIABETES}
    resources = {
        "p": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "MRN-synthea-1"}]},
        "c": {"resourceType": "Condition", "subject": {"reference": URN["p"]}, **condition},
        "g": {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": "Hemoglobin A1c total in Blood < 7.0"},
            "subject": {"reference": URN["p"]},
            "addresses": [{"reference": URN["c"]}],
        },
        "x": {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "order",
            "subject": {"reference": URN["p"]},
            "addresses": [{"reference": URN["c"]}],
            "goal": [{"reference": URN["g"]}],
        },
    }
    entries = []
    for key, resource in resources.items():
        resource["id"] = URN[key].removeprefix("urn:uuid:")
        entry = {"fullUrl": URN[key], "resource": resource}
        if kind in ("transaction", "batch"):
            entry["request"] = {"method": "POST", "url": resource["resourceType"]}
        entries.append(entry)
    if request is not None:
        entries[1]["request"] = request
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _read(bundle: dict) -> Plan:
    return bundle_to_plan(bundle, BASE, MRN)


def _careplan(bundle: dict) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan")


# ---- the import: a placeholder to an entry planbridge does not write becomes a reference that needs none ------


def test_a_synthea_condition_placeholder_becomes_a_display_reference_and_the_push_holds_no_placeholder():
    bundle = _synthea()
    kept = copy.deepcopy(bundle)
    plan = _read(bundle)
    assert plan.goals[0].addresses == [Ref(type="Condition", display="Prediabetes")]
    assert plan.careplan_extra["addresses"] == [{"type": "Condition", "display": "Prediabetes"}]
    assert "urn:" not in json.dumps(codec.to_dict(plan))
    assert bundle == kept  # the input Bundle is read, never changed
    pushed = plan_to_bundle(plan, BASE, MRN)
    assert unresolved_placeholders(pushed) == {}
    assert _careplan(pushed)["addresses"] == [{"type": "Condition", "display": "Prediabetes"}]


def test_a_placeholder_to_a_condition_with_an_identifier_becomes_a_logical_reference():
    ident = {"use": "official", "system": "https://ehr.example.org/condition", "value": "c-77"}
    plan = _read(_synthea({"code": PREDIABETES, "identifier": [ident]}))
    logical = Ref(type="Condition", identifier=Identifier("https://ehr.example.org/condition", "c-77"))
    assert plan.goals[0].addresses == [logical]
    assert plan.careplan_extra["addresses"] == [
        {"type": "Condition", "identifier": {"system": "https://ehr.example.org/condition", "value": "c-77"}}
    ]


def test_a_placeholder_to_an_entry_put_under_its_server_id_becomes_that_literal_reference():
    plan = _read(_synthea({}, request={"method": "PUT", "url": "Condition/ehr-c-9"}))
    assert plan.goals[0].addresses == [Ref(reference="Condition/ehr-c-9")]
    assert plan.careplan_extra["addresses"] == [{"reference": "Condition/ehr-c-9"}]


def test_the_reference_own_display_is_kept_over_the_resource_s_name():
    bundle = _synthea()
    bundle["entry"][2]["resource"]["addresses"][0]["display"] = "Borderline diabetes"
    assert _read(bundle).goals[0].addresses == [Ref(type="Condition", display="Borderline diabetes")]


def test_a_placeholder_to_an_entry_with_nothing_to_refer_to_it_by_is_refused_naming_its_path():
    with pytest.raises(MappingError) as refused:
        _read(_synthea({}))
    assert list(refused.value.data["errors"]) in (
        ["goals[0].addresses[0].reference"],
        ["careplan_extra.addresses[0].reference"],
    )
    with pytest.raises(ConversionRefused) as converted:
        from_fhir(_synthea({}), SETTINGS)
    assert any(i.path.endswith("addresses[0].reference") and "Condition" in i.message for i in converted.value.issues)


def test_a_placeholder_no_entry_has_is_refused_in_a_collection_and_named_in_a_transaction():
    collection = _synthea(kind="collection")
    del collection["entry"][1]  # the Condition
    with pytest.raises(ConversionRefused) as refused:
        from_fhir(collection, SETTINGS)
    assert any(URN["c"] in i.message and i.path.endswith("addresses[0].reference") for i in refused.value.issues)
    transaction = _synthea()
    del transaction["entry"][1]
    issues = validate(transaction, SETTINGS)
    named = {i.path for i in issues if i.severity == "error"}
    assert "Bundle.entry[1].resource.addresses[0].reference" in named  # the Goal, as the server names it
    assert "Bundle.entry[2].resource.addresses[0].reference" in named  # the CarePlan


# ---- the backstop -------------------------------------------------------------------------------------------


def test_the_backstop_names_each_dangling_placeholder_and_nothing_else():
    bundle = plan_to_bundle(_plan(), BASE, MRN)
    assert unresolved_placeholders(bundle) == {}
    goal = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Goal")
    index = next(i for i, e in enumerate(bundle["entry"]) if e["resource"] is goal)
    goal["addresses"] = [
        {"reference": URN["c"]},  # dangling
        {"reference": bundle["entry"][0]["fullUrl"]},  # an entry's fullUrl: resolves
        {"reference": "Condition/1"},
        {"reference": "#c1"},
        {"display": "urn:uuid:not-a-reference"},
    ]
    goal["extension"] = [{"url": "http://example.org/x", "valueReference": {"reference": "urn:oid:1.2.3"}}]
    found = unresolved_placeholders(bundle)
    assert set(found) == {
        f"Bundle.entry[{index}].resource.addresses[0].reference",
        f"Bundle.entry[{index}].resource.extension[0].valueReference.reference",
    }
    assert URN["c"] in found[f"Bundle.entry[{index}].resource.addresses[0].reference"]


def _plan() -> Plan:
    return codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "minimal.json").read_text()))


def test_convert_to_fhir_refuses_a_plan_whose_bundle_would_hold_a_dangling_placeholder():
    document = codec.to_dict(_plan())
    document["goals"][0]["addresses"] = [{"reference": URN["c"]}]
    with pytest.raises(ConversionRefused) as refused:
        to_fhir(document, SETTINGS)
    assert any(i.path.endswith(".resource.addresses[0].reference") for i in refused.value.issues)
    assert any(i.path.endswith(".resource.addresses[0].reference") for i in validate(document, SETTINGS))


def test_the_intake_refuses_an_event_adding_a_dangling_placeholder_and_names_the_goal():
    before = _plan()
    after = copy.deepcopy(before)
    after.goals[0].addresses = [Ref(reference=URN["c"])]
    with pytest.raises(Undeliverable) as refused:
        check_deliverable(before, after, BASE, MRN)
    (path,) = refused.value.errors["fhir"]
    assert path == f"Goal({before.id}/{before.goals[0].id}).addresses[0].reference"


def test_the_intake_checks_placeholders_before_leaving_untouched_goals_out():
    """A check-in on one goal leaves the other goal out of the validation; the CarePlan's reference to it must
    not be taken for a dangling placeholder."""
    before = _plan()
    before.goals.append(dataclasses.replace(before.goals[0], id="goal-second", check_ins=[], ratings=[]))
    after = copy.deepcopy(before)
    moment = "2026-03-01T09:00:00Z"
    check_in = CheckIn(id="c-new", at=moment, measure=Concept(text="Walked today"), text="yes", recorded_by="patient")
    after.goals[0].check_ins.append(check_in)
    check_deliverable(before, after, BASE, MRN)


# ---- what a FHIR server makes of the Bundle planbridge pushes for an imported Synthea plan ----------------------


def test_the_push_of_an_imported_synthea_plan_is_a_transaction_the_server_takes(fhir_base_url):
    pushed = plan_to_bundle(_read(_synthea()), BASE, MRN)
    answer = requests.post(fhir_base_url, json=pushed, headers={"Content-Type": "application/fhir+json"}, timeout=30)
    assert answer.status_code == 200, answer.text


# ---- `planbridge plans import`, the installed command ----------------------------------------------------------


def test_plans_import_stores_the_synthea_plan_without_its_placeholders_and_refuses_one_it_cannot_keep(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    env.update(
        PLANBRIDGE_IDENTIFIER_BASE=BASE, PLANBRIDGE_MRN_SYSTEM=MRN, DATABASE_URL=f"sqlite:///{tmp_path / 'pb.db'}"
    )
    upgraded = run_planbridge(["db", "upgrade"], env=env, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr

    def run(*args: str, document: object) -> subprocess.CompletedProcess:
        stdin = json.dumps(document)
        return run_planbridge([*args, "-"], env=env, input=stdin, timeout=60)

    refused = run("plans", "import", document=_synthea({}))
    assert refused.returncode == 1
    assert "addresses[0].reference" in refused.stderr and URN["c"] in refused.stderr
    imported = run("plans", "import", document=_synthea())
    assert imported.returncode == 0, imported.stderr
    with UnitOfWork(create_engine(env["DATABASE_URL"])) as uow:
        stored = uow.plans.get(imported.stdout.strip())
    assert stored is not None and stored.goals[0].addresses == [Ref(type="Condition", display="Prediabetes")]
    assert unresolved_placeholders(plan_to_bundle(stored, BASE, MRN)) == {}
