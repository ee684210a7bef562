"""Issue #12's reproduction, end to end: an open conflict never lets a clinician's edit be overwritten.

The service runs over HTTP (signed team events in), the worker is stopped, the EHR edits the real
local FHIR server, and an operator runs `planbridge sync push|pull|status` by hand, in several orders.
Before the fix, the pull after the conflict took the EHR's version as the merge base, the plan went
back to `pending`, and the next push wrote the team's `active` over the EHR's `on-hold`.
"""

import copy
import json
import os
import re
import sys
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from service.cli import main
from service.fhir.client import FhirClient
from tests.cli_support import run_planbridge
from tests.live import Live
from tests.support import goal_event

BIN = Path(sys.executable).parent / "planbridge"
API_KEY = "conflict-safety-key-0123456789"
EVENT = json.loads(
    (Path(__file__).resolve().parents[2] / "fixtures" / "events" / "goal-status-changed.json").read_text()
)


@pytest.fixture
def live(database, fhir_base_url):
    engine, url = database
    service = Live(engine, fhir_base_url, api_keys=(API_KEY,))
    service.database_url = url
    yield service
    service.close()


def cli(live: Live, *args: str, process: bool = False) -> dict | list:
    """Run a planbridge command with the service's settings: in-process (the same command code, without
    two seconds of process start each), or as a real process."""
    env = {
        "DATABASE_URL": live.database_url,
        "FHIR_BASE_URL": live.settings.fhir_base_url,
        "PLANBRIDGE_CREATE_PATIENTS": "true",
        "PLANBRIDGE_IDENTIFIER_BASE": live.settings.identifier_base,
    }
    if process:
        outside = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
        done = run_planbridge(args, env={**outside, **env}, timeout=60, check=True)
        return json.loads(done.stdout)
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def server_goal(live: Live, plan_id: str) -> dict:
    return live.fhir.find_one("Goal", {"identifier": f"{live.settings.identifier_base}/goal|{plan_id}/goal-walk"})


def team_sets_active(live: Live, plan_id: str) -> None:
    event = copy.deepcopy(EVENT)
    event["data"].update(plan_id=plan_id, goal_id="goal-walk", lifecycle_status="active")
    assert live.post(event).status_code == 202


def ehr_sets_on_hold(live: Live, plan_id: str) -> None:
    ehr = FhirClient(live.settings.fhir_base_url)
    goal = server_goal(live, plan_id)
    ehr.request("PUT", f"Goal/{goal['id']}", json={**goal, "lifecycleStatus": "on-hold"})


def says_conflicted_everywhere(live: Live, plan_id: str) -> None:
    """sync status, GET /plans/{id}/sync, /metrics and the console all say conflicted, with the conflict."""
    status = cli(live, "sync", "status", "--plan", plan_id, process=True)
    assert status["status"] == "conflicted"
    (conflict,) = [c for c in status["conflicts"] if c["status"] == "open"]
    assert conflict["path"] == "goals[id=goal-walk].lifecycle_status"
    assert (conflict["ours"], conflict["theirs"]) == ("active", "on-hold")
    api = requests.get(f"{live.url}/plans/{plan_id}/sync", headers={"X-API-Key": API_KEY}, timeout=10).json()
    assert api["status"] == "conflicted" and len(api["conflicts"]) == 1
    metrics = requests.get(f"{live.url}/metrics", headers={"X-API-Key": API_KEY}, timeout=10).text
    assert 'planbridge_plans{status="conflicted"} 1.0' in metrics
    assert "planbridge_conflicts_open 1.0" in metrics
    http = requests.Session()  # the console's plan page, signed in through its form
    token = re.search(r'name="csrf_token" value="([^"]+)"', http.get(f"{live.url}/console/sign-in", timeout=10).text)
    http.post(f"{live.url}/console/sign-in", data={"api_key": API_KEY, "csrf_token": token.group(1)}, timeout=10)
    page = http.get(f"{live.url}/console/plans/{plan_id}", timeout=10).text
    assert re.findall(r'class="state state-(\w+)"', page) == ["conflicted", "conflicted"]
    assert "In sync" not in page


SEQUENCES = {
    # the issue's own order: push meets the EHR's edit, then a pull of the plan, then a push
    "push-pull_plan-push": ["push", "pull_plan", "push"],
    # an incremental pull (what a notification or the periodic resync runs) between the pushes
    "push-pull_changed-push-pull_plan-push": ["push", "pull_changed", "push", "pull_plan", "push"],
    # the pull sees the EHR's edit first, then pushes and pulls repeat
    "pull_plan-push-pull_plan-pull_changed-push": ["pull_plan", "push", "pull_plan", "pull_changed", "push"],
}


@pytest.mark.parametrize("team_first", [True, False], ids=["team-first", "ehr-first"])
@pytest.mark.parametrize("sequence", list(SEQUENCES), ids=list(SEQUENCES))
def test_an_open_conflict_keeps_the_ehr_edit_on_the_server_until_it_is_resolved(live, sequence, team_first):
    proposed = goal_event()
    plan_id = proposed["data"]["plan_id"]
    assert live.post(proposed).status_code == 202
    live.worker.run_until_idle()  # plan and goal pushed; from here on the worker is stopped
    assert server_goal(live, plan_id)["lifecycleStatus"] == "proposed"

    edits = [team_sets_active, ehr_sets_on_hold]
    for edit in edits if team_first else reversed(edits):
        edit(live, plan_id)

    for step in SEQUENCES[sequence]:
        if step == "push":
            (result,) = cli(live, "sync", "push", "--plan", plan_id)
            assert result["requests"] <= 8  # no retry storm
        elif step == "pull_plan":
            cli(live, "sync", "pull", "--plan", plan_id)
        else:
            cli(live, "sync", "pull")
        goal = server_goal(live, plan_id)
        assert goal["lifecycleStatus"] == "on-hold", f"after {step}, the EHR's edit was overwritten"
    says_conflicted_everywhere(live, plan_id)

    # Only a resolution lets the team's value through, with If-Match on the version the pull saw.
    (conflict,) = cli(live, "conflicts", "list", "--plan", plan_id)
    resolved = cli(live, "conflicts", "resolve", str(conflict["id"]), "--take", "ours")
    assert resolved["status"] == "resolved"
    (result,) = cli(live, "sync", "push", "--plan", plan_id)
    assert result["status"] == "in_sync"
    assert server_goal(live, plan_id)["lifecycleStatus"] == "active"
    assert cli(live, "sync", "status", "--plan", plan_id)["status"] == "in_sync"
