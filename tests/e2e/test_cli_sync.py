"""`planbridge sync`, `conflicts` and `fhir check` as an operator runs them, on a real database and server."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.store.db import create_engine
from service.store.uow import UnitOfWork
from tests.cli_support import run_planbridge
from tests.support import FIXTURES

BIN = Path(sys.executable).parent / "planbridge"


def run(*args: str, env: dict[str, str], check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_planbridge(args, env=env, timeout=60, check=check, cwd=cwd)


@pytest.fixture
def env(database, fhir_base_url):
    _, url = database
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    values.update(
        DATABASE_URL=url,
        FHIR_BASE_URL=fhir_base_url,
        PLANBRIDGE_CREATE_PATIENTS="true",
        PLANBRIDGE_IDENTIFIER_BASE=f"https://planbridge.test/{uuid.uuid4().hex[:8]}/id",
    )
    return values


def add_plan(url: str, plan_id: str | None = None) -> Plan:
    """Store the knee plan (under `plan_id` when given) with an MRN of its own."""
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text()))
    plan.id = plan_id or plan.id
    plan.patient.mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    plan.touch("2026-11-22T10:00:00+00:00")
    engine = create_engine(url)
    try:
        with UnitOfWork(engine) as uow:
            uow.plans.save(plan)
            uow.commit()
    finally:
        engine.dispose()
    return plan


def test_push_status_conflict_and_resolution_from_the_command_line(env, fhir_profile, fhir_profile_url):
    """On each server profile: hapi (a stale If-Match answers 409) and medplum (412; a Bundle of more than 8
    entries, any of them conditional, is split)."""
    fhir_base_url = env["FHIR_BASE_URL"] = fhir_profile_url
    plan = add_plan(env["DATABASE_URL"])
    (first,) = json.loads(run("sync", "push", "--plan", plan.id, env=env).stdout)
    # The Patient lookup; the CapabilityStatement, read once by each process for a Bundle of more than 8
    # entries (the knee plan: 13); the transactions: one on hapi, two on medplum (the Patient, people and
    # CareTeam, then the goals, check-ins and CarePlan).
    assert (first["status"], first["requests"]) == ("in_sync", 1 + 1 + {"hapi": 1, "medplum": 2}[fhir_profile])
    (again,) = json.loads(run("sync", "push", "--all", env=env).stdout)
    assert again["requests"] == 0
    status = json.loads(run("sync", "status", "--plan", plan.id, env=env).stdout)
    assert status["status"] == "in_sync" and {r["type"] for r in status["resources"]} >= {"CarePlan", "Goal"}

    ehr = FhirClient(fhir_base_url)
    goal = ehr.find_one("Goal", {"identifier": f"{env['PLANBRIDGE_IDENTIFIER_BASE']}/goal|{plan.id}/goal-walk"})
    ehr.request("PUT", f"Goal/{goal['id']}", json={**goal, "statusReason": "from the EHR"})
    with UnitOfWork(create_engine(env["DATABASE_URL"])) as uow:
        ours = uow.plans.get(plan.id)
        ours.goal("goal-walk").status_reason = "from the team"
        ours.touch("2026-11-22T11:00:00+00:00")
        uow.plans.save(ours)
        uow.commit()
    (pushed,) = json.loads(run("sync", "push", "--plan", plan.id, env=env).stdout)
    assert pushed["status"] == "conflicted"
    (conflict,) = json.loads(run("conflicts", "list", "--plan", plan.id, env=env).stdout)
    assert (conflict["ours"], conflict["theirs"]) == ("from the team", "from the EHR")
    refused = run("conflicts", "resolve", str(conflict["id"]), env=env, check=False)
    assert refused.returncode == 2 and "--take" in refused.stderr
    resolved = json.loads(run("conflicts", "resolve", str(conflict["id"]), "--take", "ours", env=env).stdout)
    assert resolved["status"] == "resolved"
    (final,) = json.loads(run("sync", "push", "--plan", plan.id, env=env).stdout)
    assert final["status"] == "in_sync"
    assert ehr.read("Goal", goal["id"])["statusReason"] == "from the team"
    pulled = json.loads(run("sync", "pull", env=env).stdout)
    assert plan.id not in pulled["outcomes"]  # our own writes are not pulled back


def test_fhir_check_names_nothing_missing_on_the_test_server(env):
    out = json.loads(run("fhir", "check", env=env).stdout)
    assert out["missing"] == [] and out["fhirVersion"].startswith("4.0")


def test_sync_without_a_fhir_server_setting_is_a_clear_error(env, tmp_path):
    # Run where no `planbridge dev` setup is (var/dev.json in the working directory would be found instead).
    result = run("sync", "push", "--all", env={**env, "FHIR_BASE_URL": ""}, check=False, cwd=tmp_path)
    assert result.returncode == 1 and "FHIR_BASE_URL is not set" in result.stderr


def test_outbox_list_and_replay_from_the_command_line(env):
    with UnitOfWork(create_engine(env["DATABASE_URL"])) as uow:
        from service.api.container import utcnow

        uow.outbox.add("plan-x", "push_plan", None, None, utcnow())
        uow.commit()
        (entry,) = uow.outbox.list()
        entry.status = "dead"
        uow.commit()
    (listed,) = json.loads(run("outbox", "list", "--status", "dead", env=env).stdout)
    assert listed["plan_id"] == "plan-x"
    (replayed,) = json.loads(run("outbox", "replay", "--all-dead", env=env).stdout)
    assert (replayed["status"], replayed["attempts"]) == ("pending", 0)
    again = run("outbox", "replay", str(replayed["id"]), env=env, check=False)
    assert again.returncode == 1 and "only dead entries" in again.stderr
    with UnitOfWork(create_engine(env["DATABASE_URL"])) as uow:
        for n in range(4):
            uow.outbox.add(f"plan-{n}", "push_plan", None, None, utcnow())
        uow.commit()
    first = json.loads(run("outbox", "list", "--limit", "2", env=env).stdout)
    rest = json.loads(run("outbox", "list", "--after", str(first[-1]["id"]), env=env).stdout)
    assert [e["plan_id"] for e in first + rest] == ["plan-x", "plan-0", "plan-1", "plan-2", "plan-3"]
    assert run("outbox", "list", "--limit", "0", env=env, check=False).returncode == 2  # a usage error


def test_db_prune_removes_finished_work_past_the_retention(env):
    from datetime import timedelta

    from service.api.container import utcnow

    with UnitOfWork(create_engine(env["DATABASE_URL"])) as uow:
        for n in range(3):
            uow.outbox.add(f"plan-{n}", "push_plan", None, None, utcnow() - timedelta(days=10))
        uow.flush()
        for row in uow.outbox.list()[:2]:
            uow.outbox.mark_done(row, utcnow() - timedelta(days=10))
        uow.commit()
    assert json.loads(run("db", "prune", env=env).stdout) == {"outbox": 0, "deliveries": 0}  # 30 days by default
    assert json.loads(run("db", "prune", "--days", "7", env=env).stdout) == {"outbox": 2, "deliveries": 0}
    kept = run("db", "prune", env={**env, "PLANBRIDGE_RETAIN_DAYS": "0"}, check=False)
    assert kept.returncode == 1 and "keep everything" in kept.stderr
    assert [e["status"] for e in json.loads(run("outbox", "list", env=env).stdout)] == ["pending"]


def test_a_push_that_fails_from_the_command_line_says_why_and_leaves_it_on_the_plan(env, fhir_base_url):
    plan = add_plan(env["DATABASE_URL"])
    ehr = FhirClient(fhir_base_url)
    for _ in range(2):  # two Goals under the identifier of one of ours: the server refuses with 412
        ehr.request(
            "POST",
            "Goal",
            json={
                "resourceType": "Goal",
                "identifier": [
                    {"system": f"{env['PLANBRIDGE_IDENTIFIER_BASE']}/goal", "value": f"{plan.id}/goal-walk"}
                ],
                "lifecycleStatus": "active",
                "description": {"text": "a copy"},
                "subject": {"display": "someone"},
            },
        )
    failed = run("sync", "push", "--plan", plan.id, env=env, check=False)
    assert failed.returncode == 1
    assert "POST [base] (transaction) failed: HAPI-0988" in failed.stderr  # not "POST  failed"
    (result,) = json.loads(failed.stdout)
    assert result["status"] == "failed" and "HAPI-0988" in result["error"]
    status = json.loads(run("sync", "status", "--plan", plan.id, env=env).stdout)
    assert status["status"] == "failed"
    assert status["last_error"].startswith("FhirMultipleMatches: POST [base] (transaction) failed: HAPI-0988")
    assert status["last_outcome"]["issue"][0]["diagnostics"].startswith("HAPI-0988")
