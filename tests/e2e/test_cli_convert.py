"""`planbridge convert`, `validate` and `schema` as an operator runs them: the installed command, files and stdin."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mappings.fhir import issues_of
from service.cli import main
from service.domain.codec import from_dict, to_dict
from service.domain.model import Plan
from tests.cli_support import run_planbridge
from tests.support import FIXTURES, MRN_SYSTEM

BIN = Path(sys.executable).parent / "planbridge"
BASE = "https://planbridge.test/convert/id"
MINIMAL = FIXTURES / "plans" / "minimal.json"


@pytest.fixture
def env():
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    values.update(PLANBRIDGE_IDENTIFIER_BASE=BASE, PLANBRIDGE_MRN_SYSTEM=MRN_SYSTEM)
    return values


def run(env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_planbridge(args, env=env, input=stdin, timeout=60)


def normal(plan: dict) -> dict:
    """Return a plan as the codec writes it, without planbridge's bookkeeping (not carried to FHIR)."""
    out = to_dict(from_dict(Plan, plan))
    out.pop("version", None)
    out.pop("updated_at", None)
    return out


def outcome(result: subprocess.CompletedProcess) -> list[dict]:
    answer = json.loads(result.stdout)
    assert answer["resourceType"] == "OperationOutcome"
    assert issues_of(answer) == []
    return answer["issue"]


def write(tmp_path: Path, name: str, value: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return str(path)


def plan_with(change) -> dict:
    plan = json.loads(MINIMAL.read_text())
    change(plan)
    return plan


def test_help_lists_the_new_commands(env):
    out = run(env, "--help").stdout
    for command in ("convert", "validate", "schema"):
        assert f"  {command}" in out
    assert "to-fhir" in run(env, "convert", "--help").stdout


def test_a_plan_goes_to_fhir_and_back_through_files(env, tmp_path):
    to = run(env, "convert", "to-fhir", str(MINIMAL))
    assert to.returncode == 0, to.stderr
    bundle = json.loads(to.stdout)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    careplan = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan")
    assert careplan["request"]["url"] == f"CarePlan?identifier={BASE}/plan|plan-minimal-0001"
    back = run(env, "convert", "from-fhir", write(tmp_path, "bundle.json", bundle))
    assert back.returncode == 0, back.stderr
    assert normal(json.loads(back.stdout)) == normal(json.loads(MINIMAL.read_text()))


@pytest.mark.parametrize("path", sorted((FIXTURES / "plans").glob("*.json")), ids=lambda p: p.name)
def test_every_example_plan_goes_to_fhir_and_back(env, tmp_path, path):
    runner = CliRunner()  # in-process: the same commands, without a process start per example
    to = runner.invoke(main, ["convert", "to-fhir", str(path)], env=env)
    assert to.exit_code == 0, to.output
    bundle_file = write(tmp_path, "bundle.json", json.loads(to.stdout))
    back = runner.invoke(main, ["convert", "from-fhir", bundle_file], env=env)
    assert back.exit_code == 0, back.output
    assert normal(json.loads(back.stdout)) == normal(json.loads(path.read_text()))
    assert runner.invoke(main, ["validate", str(path)], env=env).exit_code == 0
    assert runner.invoke(main, ["validate", bundle_file], env=env).exit_code == 0


def test_a_plan_goes_to_fhir_and_back_through_stdin(env):
    to = run(env, "convert", "to-fhir", "-", stdin=MINIMAL.read_text())
    assert to.returncode == 0, to.stderr
    assert to.stdout.startswith('{\n  "resourceType": "Bundle"')  # indented JSON
    patient = json.loads(to.stdout)["entry"][0]
    assert patient["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": f"identifier={MRN_SYSTEM}|MRN-000777",
    }
    back = run(env, "convert", "from-fhir", "-", stdin=to.stdout)
    assert back.returncode == 0, back.stderr
    assert normal(json.loads(back.stdout)) == normal(json.loads(MINIMAL.read_text()))


def test_to_fhir_refuses_a_plan_that_breaks_a_rule_and_names_the_path(env, tmp_path):
    plan = plan_with(lambda p: p["goals"][0]["agreements"][0].update(status="disagree"))
    result = run(env, "convert", "to-fhir", write(tmp_path, "plan.json", plan))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "goals[0].lifecycle_status: the patient disagrees with this goal" in result.stderr


def test_to_fhir_converts_despite_warnings_and_prints_them_on_stderr(env, tmp_path):
    plan = plan_with(lambda p: p["goals"][0].update(agreements=[]))
    result = run(env, "convert", "to-fhir", write(tmp_path, "plan.json", plan))
    assert result.returncode == 0
    assert json.loads(result.stdout)["resourceType"] == "Bundle"
    assert "warning: goals[0].agreements: no recorded agreement from the patient" in result.stderr


def test_to_fhir_refuses_what_is_not_a_plan(env):
    event = FIXTURES / "events" / "goal-proposed.json"
    result = run(env, "convert", "to-fhir", str(event))
    assert result.returncode == 1
    assert "error: id: Plan needs 'id'" in result.stderr
    assert "error: data: 'data' is not a field of Plan" in result.stderr


def test_from_fhir_needs_a_bundle_with_exactly_one_careplan(env, tmp_path):
    bundle = json.loads(run(env, "convert", "to-fhir", str(MINIMAL)).stdout)
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "CarePlan"]
    result = run(env, "convert", "from-fhir", write(tmp_path, "bundle.json", bundle))
    assert result.returncode == 1
    assert "Bundle.entry:" in result.stderr and "exactly one CarePlan, not 0" in result.stderr
    plan = run(env, "convert", "from-fhir", str(MINIMAL))
    assert plan.returncode == 1 and "expected a FHIR Bundle" in plan.stderr


def test_from_fhir_refuses_a_bundle_with_invalid_fhir_and_names_the_element(env, tmp_path):
    bundle = json.loads(run(env, "convert", "to-fhir", str(MINIMAL)).stdout)
    goal = next(i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "Goal")
    bundle["entry"][goal]["resource"]["lifecycleStatus"] = "done"
    result = run(env, "convert", "from-fhir", write(tmp_path, "bundle.json", bundle))
    assert result.returncode == 1
    assert f"Bundle.entry[{goal}].resource.lifecycleStatus: 'done' is not in the required value set" in result.stderr


@pytest.mark.parametrize(
    "command, garbage",
    [
        (("convert", "to-fhir"), "garbage{"),
        (("convert", "from-fhir"), "[1, 2"),
        (("validate",), ""),
        (("validate",), '{"value": NaN}'),
    ],
)
def test_garbage_input_ends_with_a_message_and_exit_1_never_a_traceback(env, command, garbage):
    result = run(env, *command, "-", stdin=garbage)
    assert result.returncode == 1
    assert "not JSON" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_missing_file_is_a_message_not_a_traceback(env, tmp_path):
    result = run(env, "convert", "to-fhir", str(tmp_path / "absent.json"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_validate_a_valid_plan(env):
    result = run(env, "validate", str(MINIMAL))
    assert result.returncode == 0, result.stderr
    assert outcome(result) == [{"severity": "information", "code": "informational", "diagnostics": "valid"}]


def test_validate_a_plan_with_only_warnings_exits_0(env, tmp_path):
    plan = plan_with(lambda p: p["goals"][0].update(agreements=[]))
    result = run(env, "validate", write(tmp_path, "plan.json", plan))
    assert result.returncode == 0
    assert [(i["severity"], i["code"], i["expression"]) for i in outcome(result)] == [
        ("warning", "business-rule", ["goals[0].agreements"])
    ]


def test_validate_a_plan_that_breaks_a_rule(env, tmp_path):
    plan = plan_with(lambda p: p.update(goal_setting="declined"))
    result = run(env, "validate", write(tmp_path, "plan.json", plan))
    assert result.returncode == 1
    issue = outcome(result)[0]
    assert issue["severity"] == "error" and issue["code"] == "business-rule"
    assert issue["expression"] == ["goals[0].lifecycle_status"]
    assert "declined to set goals" in issue["diagnostics"]
    assert "goals[0].lifecycle_status" in result.stderr


def test_validate_a_plan_whose_shape_is_wrong(env, tmp_path):
    plan = plan_with(lambda p: p["team"][1].update(kind="nurse", colour="blue"))
    issues = outcome(run(env, "validate", write(tmp_path, "plan.json", plan)))
    assert [(i["code"], i["expression"]) for i in issues] == [
        ("code-invalid", ["team[1].kind"]),
        ("structure", ["team[1].colour"]),
    ]


def test_validate_an_invalid_fhir_goal(env, tmp_path):
    goal = {
        "resourceType": "Goal",
        "lifecycleStatus": "finished",
        "description": {"text": "Walk to the park"},
        "subject": {"reference": "Patient/1"},
    }
    result = run(env, "validate", write(tmp_path, "goal.json", goal))
    assert result.returncode == 1
    assert [(i["severity"], i["code"], i["expression"]) for i in outcome(result)] == [
        ("error", "code-invalid", ["Goal.lifecycleStatus"])
    ]


def test_validate_a_structurally_broken_fhir_resource(env, tmp_path):
    goal = {"resourceType": "Goal", "lifecycleStatus": "proposed", "subject": {"reference": "Patient/1"}}
    goal["target"] = [{"measure": {"text": "steps"}, "dueDate": "soon"}]
    issues = outcome(run(env, "validate", write(tmp_path, "goal.json", goal)))
    assert {i["expression"][0] for i in issues} == {"Goal.description", "Goal.target[0].dueDate"}
    assert {i["code"] for i in issues} == {"structure"}


def test_validate_a_bundle(env, tmp_path):
    bundle = json.loads(run(env, "convert", "to-fhir", str(MINIMAL)).stdout)
    result = run(env, "validate", "-", stdin=json.dumps(bundle))
    assert result.returncode == 0, result.stdout
    assert outcome(result)[0]["diagnostics"] == "valid"

    broken = copy.deepcopy(bundle)
    goal = next(i for i, e in enumerate(broken["entry"]) if e["resource"]["resourceType"] == "Goal")
    broken["entry"][goal]["resource"]["lifecycleStatus"] = "finished"
    result = run(env, "validate", write(tmp_path, "bundle.json", broken))
    assert result.returncode == 1
    assert [(i["code"], i["expression"]) for i in outcome(result)] == [
        ("code-invalid", [f"Bundle.entry[{goal}].resource.lifecycleStatus"])
    ]


def test_validate_a_bundle_runs_the_plan_rules_on_its_careplan(env, tmp_path):
    plan = plan_with(lambda p: p["goals"][0].update(agreements=[{"member_id": "patient", "status": "disagree"}]))
    plan["goals"][0]["lifecycle_status"] = "proposed"
    bundle = json.loads(run(env, "convert", "to-fhir", write(tmp_path, "plan.json", plan)).stdout)
    careplan = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan")
    goal = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Goal")
    goal["lifecycleStatus"] = "active"  # the EHR marks it active although the patient disagrees
    assert careplan["goal"]
    result = run(env, "validate", write(tmp_path, "bundle.json", bundle))
    assert result.returncode == 1
    issue = outcome(result)[0]
    assert (issue["code"], issue["expression"]) == ("business-rule", ["goals[0].lifecycle_status"])
    assert issue["diagnostics"] == "the plan read from the CarePlan: the patient disagrees with this goal"


def test_validate_json_that_is_not_an_object(env):
    result = run(env, "validate", "-", stdin="[1, 2]")
    assert result.returncode == 1
    assert outcome(result)[0]["code"] == "structure"


def test_schema_prints_the_committed_schema(env):
    result = run(env, "schema")
    assert result.returncode == 0
    assert result.stdout == (FIXTURES / "plan.schema.json").read_text()
