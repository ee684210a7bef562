"""`planbridge plans import` refuses at the door what team events refuse (service/services/plan_door.py).

A black-box audit found the import storing and pushing what no event could have made: plan and goal ids
that are no FHIR ids (`pa/x`, `plan x/1`, `plan-x\\n`, `goal sleep`: identifiers `{plan id}/{goal id}`
collided and two plans wrote one Goal), a plan id equal to a stored plan's but for case (both plans linked
the same resources), goal ids equal but for case (a push refused for ever), an MRN with `|` (a new Patient
each push). Each is now refused with exit 1, naming the plan path, and nothing is stored (`--replace` too).
"""

import copy
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
MINIMAL = FIXTURES / "plans" / "minimal.json"


def run(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_planbridge(args, env=env, input=stdin, timeout=60)


@pytest.fixture
def env(database):  # migrated
    _, url = database
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    # FHIR_BASE_URL set (never asked: an import sends nothing), so no running `planbridge dev` setup is taken
    values.update(DATABASE_URL=url, FHIR_BASE_URL="http://127.0.0.1:9/fhir")
    return values


def _minimal(change) -> dict:
    plan = json.loads(MINIMAL.read_text())
    change(plan)
    return plan


def _set(*path_and_value):
    *path, value = path_and_value

    def change(plan: dict) -> None:
        node = plan
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _twin_goal(plan: dict) -> None:
    twin = copy.deepcopy(plan["goals"][0])
    twin["id"] = plan["goals"][0]["id"].upper()
    plan["goals"].append(twin)


def _check_ins(first: str, second: str):
    def change(plan: dict) -> None:
        plan["goals"][0]["targets"] = [{"measure": {"text": "nights slept through"}}]
        plan["goals"][0]["check_ins"] = [
            {"id": i, "at": "2026-01-05T08:00:00Z", "measure": {"text": "nights slept through"}, "integer": 3}
            for i in (first, second)
        ]

    return change


def _member_id(plan: dict) -> None:
    plan["team"][1]["id"] = "dr lee"
    plan["goals"][0]["agreements"][1]["member_id"] = "dr lee"


def _step(step_id: str):
    return _set("steps", [{"id": step_id, "title": "Keep a sleep diary"}])


# case -> (plan change, path named, words of the message)
REFUSED = {
    "plan-id-slash": (_set("id", "pa/x"), "id", "1-64 letters"),
    "plan-id-space": (_set("id", "plan x/1"), "id", "1-64 letters"),
    "plan-id-newline": (_set("id", "plan-x\n"), "id", "1-64 letters"),
    "goal-id-slash": (_set("goals", 0, "id", "x/g"), "goals[0].id", "1-64 letters"),
    "goal-id-space": (_set("goals", 0, "id", "goal sleep"), "goals[0].id", "1-64 letters"),
    "member-id": (_member_id, "team[1].id", "1-64 letters"),
    "step-id": (_step("step/1"), "steps[0].id", "1-64 letters"),
    "goal-ids-twins": (_twin_goal, "goals[1].id", "only in case"),
    "check-in-ids-twins": (_check_ins("obs-1", "OBS-1"), "goals[0].check_ins[1].id", "only in case"),
    "mrn-bar": (_set("patient", "mrn", "A|B"), "patient.mrn", "must not contain '|'"),
    "title-201": (_set("title", "t" * 201), "title", "between 1 and 200"),
    "review-every-121": (_set("review_every", {"value": 121, "unit": "d"}), "review_every.value", "120"),
    "target-value-1e13": (
        _set("goals", 0, "targets", [{"measure": {"text": "hours"}, "quantity": {"value": 1e13}}]),
        "goals[0].targets[0].quantity.value",
        "1000000000000",
    ),
}


def _stored(env: dict[str, str]) -> tuple[list[str], list[str]]:
    with UnitOfWork(create_engine(env["DATABASE_URL"])) as uow:
        return uow.plans.ids(), [row.plan_id for row in uow.outbox.list(status="pending")]


@pytest.mark.parametrize("case", list(REFUSED))
def test_plans_import_refuses_what_team_events_refuse_naming_the_path_and_stores_nothing(env, case):
    change, path, words = REFUSED[case]

    refused = run("plans", "import", "-", env=env, stdin=json.dumps(_minimal(change)))

    assert refused.returncode == 1, refused.stdout
    assert refused.stdout == ""
    issues = refused.stderr.splitlines()[1:]
    assert any(line.startswith(f"error: {path}: ") and words in line for line in issues), refused.stderr
    assert _stored(env) == ([], [])


def test_plans_import_replace_refuses_too_and_keeps_the_stored_plan(env):
    assert run("plans", "import", str(MINIMAL), env=env).returncode == 0

    refused = run(
        "plans", "import", "--replace", "-", env=env, stdin=json.dumps(_minimal(_set("goals", 0, "id", "x/g")))
    )

    assert refused.returncode == 1 and "error: goals[0].id: " in refused.stderr, refused.stderr
    with UnitOfWork(create_engine(env["DATABASE_URL"])) as uow:
        kept = uow.plans.get("plan-minimal-0001")
        assert kept is not None and kept.version == 1 and [g.id for g in kept.goals] == ["goal-sleep"]
        assert len(uow.outbox.list(status="pending")) == 1


def test_plans_import_refuses_a_plan_id_equal_to_a_stored_one_but_for_case_even_with_replace(env):
    assert run("plans", "import", str(MINIMAL), env=env).returncode == 0
    upper = json.dumps(_minimal(_set("id", "PLAN-MINIMAL-0001")))

    for args in (("plans", "import", "-"), ("plans", "import", "--replace", "-")):
        refused = run(*args, env=env, stdin=upper)
        assert refused.returncode == 1, refused.stdout
        assert "conflict: plan PLAN-MINIMAL-0001 differs from plan plan-minimal-0001 only in case" in refused.stderr

    assert _stored(env) == (["plan-minimal-0001"], ["plan-minimal-0001"])
    # the same id is no twin: replacing the plan itself still works
    assert run("plans", "import", "--replace", str(MINIMAL), env=env).returncode == 0


def test_plans_import_of_a_bundle_refuses_a_plan_id_that_is_no_fhir_id(env):
    converted = run("convert", "to-fhir", str(MINIMAL), env=env)
    assert converted.returncode == 0, converted.stderr
    bundle = json.loads(converted.stdout)
    careplan = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan")
    ours = next(i for i in careplan["identifier"] if i["value"] == "plan-minimal-0001")
    ours["value"] = "plan x/1"

    refused = run("plans", "import", "-", env=env, stdin=json.dumps(bundle))

    assert refused.returncode == 1, refused.stdout
    assert any(line.startswith("error: id: ") for line in refused.stderr.splitlines()), refused.stderr
    assert _stored(env) == ([], [])
