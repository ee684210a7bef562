"""A FHIR server that lost everything (issue #13): the in-memory local server is stopped and started again on the
same port, as a purged server or one restored from an old backup would be. The next change of a plan puts it
back (the push's 404 makes planbridge check its CarePlan, forget the stale links and write the plan again), and
`planbridge sync repair` puts back the plans nobody changed. No outbox entry dies for it.

Each test starts its own local server (not the session's), in both profiles; SQLite.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from service.devfhir import LocalFhirServer
from service.store.db import create_engine, upgrade
from tests.cli_support import run_planbridge
from tests.ehr_world import seed_ehr_world
from tests.sync_model_support import SyncWorld

BIN = Path(sys.executable).parent / "planbridge"


@pytest.fixture
def server(fhir_profile, tmp_path):
    if os.environ.get("FHIR_TEST_SERVER_URL"):
        pytest.skip("needs a local FHIR server it can restart")
    server = LocalFhirServer(profile=fhir_profile, log_path=tmp_path / "fhir-server.log")
    seed_ehr_world(server.start())
    yield server
    server.stop()


def _restart(server: LocalFhirServer) -> None:
    """Stop the in-memory server and start it again on the same port: everything it held is gone."""
    port = int(server.base_url.split(":")[2].split("/")[0])
    server.stop()
    server.port = port
    # The EHR's own resources the plans name (Conditions...) are back (restored with the EHR), the plans are not.
    seed_ehr_world(server.start())


def _linked(world: SyncWorld, plan_id: str) -> dict[str, str]:
    return {r["key"]: f"{r['type']}/{r['id']}" for r in world.sync.status(plan_id).resources}


def _live(world: SyncWorld, plan_id: str) -> None:
    """Every link of the plan names a resource the server holds, and the CarePlan carries the plan."""
    links = _linked(world, plan_id)
    careplan = world.find("CarePlan", "plan", plan_id)
    assert careplan is not None, f"plan {plan_id} is not back on the server"
    assert links["careplan"] == f"CarePlan/{careplan['id']}"
    for key, ref in links.items():
        world.reader.request("GET", ref)  # raises FhirNotFound for a stale link
        if key.startswith("goal:"):
            goal = world.find("Goal", "goal", f"{plan_id}/{key.split(':', 1)[1]}")
            assert goal is not None and ref == f"Goal/{goal['id']}"


def test_the_next_change_puts_a_lost_plan_back_and_repair_puts_back_the_rest(server, tmp_path):
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    engine = create_engine(url)
    upgrade(engine)
    world = SyncWorld(engine, server.base_url)
    changed = world.add_plan("knee-rehabilitation.json")
    untouched = world.add_plan("cardiac-rehab-checkins.json")
    for plan_id in (changed, untouched):
        assert world.sync.push(plan_id).status == "in_sync"
        world.sync.pull_plans([plan_id])

    _restart(server)
    assert world.find("CarePlan", "plan", changed) is None  # the server forgot everything

    # A team event: the worker's push meets 404s, recreates the plan, and the entry is done, not dead.
    assert world.team("plan.updated", plan_id=changed, title="After the server lost it")[0] == 202
    for _ in range(3):
        world.tick(4000)
        world.worker.process_one()
    entries = [(r.kind, r.status, r.last_error) for r in world.outbox() if r.plan_id == changed]
    assert entries and all(status == "done" for _, status, _ in entries), entries
    assert world.find("CarePlan", "plan", changed)["title"] == "After the server lost it"
    _live(world, changed)
    assert world.sync.status(changed).status == "in_sync"
    assert world.duplicates() == []

    # The plan nobody changed: `planbridge sync repair --all` finds it gone and pushes it again.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=url,
        FHIR_BASE_URL=server.base_url,
        PLANBRIDGE_CREATE_PATIENTS="true",
        PLANBRIDGE_IDENTIFIER_BASE=world.base,
    )
    done = run_planbridge(["sync", "repair", "--all"], env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {changed: "present", untouched: "recreated"}
    _live(world, untouched)
    assert world.sync.status(untouched).status == "in_sync"
    plan = world.plan(untouched)
    server_plan = world.server(untouched)
    assert [g["id"] for g in server_plan.doc["goals"]] == [g.id for g in plan.goals]
    assert sum(len(g.check_ins) for g in plan.goals) == sum(
        len(g.get("check_ins", [])) for g in server_plan.doc["goals"]
    )
    assert world.sync.push(untouched).requests == 0  # in step: nothing more to send
    again = run_planbridge(["sync", "repair", "--plan", untouched], env=env, timeout=120)
    assert json.loads(again.stdout) == {untouched: "present"}
    engine.dispose()


def test_a_plan_found_again_under_other_ids_is_relinked_not_duplicated(fhir_profile_url, tmp_path):
    """A server restored with renumbering: the CarePlan and Goals exist, carrying planbridge's identifiers,
    under other ids. The push's 404 relinks them by identifier; nothing is created twice."""
    engine = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
    upgrade(engine)
    world = SyncWorld(engine, fhir_profile_url)
    plan_id = world.add_plan("minimal.json")
    assert world.sync.push(plan_id).status == "in_sync"
    world.sync.pull_plans([plan_id])
    old = _linked(world, plan_id)

    # "Restore" the CarePlan under a new id: a copy is created, the original deleted.
    careplan = world.find("CarePlan", "plan", plan_id)
    copy = {k: v for k, v in careplan.items() if k not in ("id", "meta")}
    world.ehr_delete(f"CarePlan/{careplan['id']}")
    moved = world.ehr.request("POST", "CarePlan", json=copy).json()

    assert world.team("plan.updated", plan_id=plan_id, title="Relinked")[0] == 202
    assert world.sync.push(plan_id).status == "in_sync"
    assert _linked(world, plan_id)["careplan"] == f"CarePlan/{moved['id']}" != old["careplan"]
    assert world.find("CarePlan", "plan", plan_id)["title"] == "Relinked"
    assert world.duplicates() == []
    engine.dispose()
