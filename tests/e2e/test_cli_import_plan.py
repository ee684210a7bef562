"""`planbridge plans import` of plan JSON, as an operator runs it: a real process and a real database.

Plan JSON used to be stored once it had a plan's shape and kept the plan's rules (`load_plan`), without the
mapping to FHIR that `convert to-fhir` and the push make: a title of only spaces, a control character, a date
that is no date or an MRN system that is no URI was stored and queued, and its push was then refused for ever
(`validate_bundle`). Now it is mapped and checked as `convert to-fhir` does it (the same refusals, each
element named), then by the push's own check (service.services.deliverable), and nothing is stored.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.store.db import create_engine
from service.store.uow import UnitOfWork
from tests.cli_support import run_planbridge
from tests.support import FIXTURES

BIN = Path(sys.executable).parent / "planbridge"
KNEE = FIXTURES / "plans" / "knee-rehabilitation.json"


def run(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_planbridge(args, env=env, input=stdin, timeout=60)


@pytest.fixture
def env(database):
    _, url = database
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    # FHIR_BASE_URL set (never asked: an import sends nothing), so no running `planbridge dev` setup is taken
    values.update(DATABASE_URL=url, FHIR_BASE_URL="http://127.0.0.1:9/fhir")
    return values


def _knee(**changes) -> dict:
    plan = json.loads(KNEE.read_text())
    plan.update(changes)
    return plan


def _patient(**changes) -> dict:
    plan = json.loads(KNEE.read_text())
    plan["patient"].update(changes)
    return plan


UNDELIVERABLE = {
    "blank-title": (_knee(title="   "), "Bundle.entry[12].resource.title", "only whitespace"),
    "control-character": (
        _knee(what_matters="Walking\u0000the dog"),
        "Bundle.entry[12].resource.extension[0].valueString",
        "control character U+0000",
    ),
    "no-date": (_knee(period_start="2026-13-45"), "Bundle.entry[12].resource.period.start", "not a valid dateTime"),
    "mrn-system-no-uri": (
        _patient(mrn_system="not a uri"),
        "Bundle.entry[0].resource.identifier[0].system",
        "not a valid uri",
    ),
}


@pytest.mark.parametrize("case", list(UNDELIVERABLE))
def test_plans_import_refuses_plan_json_fhir_cannot_hold_naming_the_element_and_stores_nothing(env, case):
    plan, path, problem = UNDELIVERABLE[case]
    document = json.dumps(plan)
    run("db", "upgrade", env=env)

    refused = run("plans", "import", "-", env=env, stdin=document)

    assert refused.returncode == 1, refused.stdout
    assert refused.stdout == ""
    issues = refused.stderr.splitlines()[1:]
    assert any(line.startswith(f"error: {path}: ") and problem in line for line in issues), refused.stderr
    # exactly what `convert to-fhir` says of it
    converted = run("convert", "to-fhir", "-", env=env, stdin=document)
    assert converted.returncode == 1 and issues == converted.stderr.splitlines()[1:]
    with UnitOfWork(create_engine(env["DATABASE_URL"])) as uow:
        assert uow.plans.ids() == []
        assert uow.outbox.list(status="pending") == []


def test_plans_import_still_stores_plan_json_fhir_can_hold_and_queues_its_push(env):
    run("db", "upgrade", env=env)

    imported = run("plans", "import", str(KNEE), env=env)

    assert imported.returncode == 0, imported.stderr
    plan_id = json.loads(KNEE.read_text())["id"]
    assert imported.stdout.strip() == plan_id
    with UnitOfWork(create_engine(env["DATABASE_URL"])) as uow:
        assert uow.plans.ids() == [plan_id]
        assert [row.plan_id for row in uow.outbox.list(status="pending")] == [plan_id]
