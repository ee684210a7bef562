"""Who changed the EHR side of a conflict, and when (issue #16 item 6), and the first history entry of an
imported or adopted plan.

A conflict opened by a pull records the resource and version that carried the EHR's value, its
`meta.lastUpdated` and `meta.source`; `GET /conflicts`, `GET /plans/{id}/sync` and the console show them.
On the real local FHIR server, both profiles (one database each: SQLite with medplum, PostgreSQL with hapi).
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from service.api.app import create_app
from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.services.history import plan_history
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.adopt import import_document
from service.sync.engine import SyncEngine, conflict_dict
from tests.db_fixtures import migrated_database
from tests.e2e.test_adoption import World
from tests.live import Live
from tests.support import FIXTURES, goal_event, settings

KEY = "origin-key-0123456789abcdef"
SOURCE = "https://ehr.example-hospital.org/apps/goal-editor#ward-7"
STATUS_EVENT = json.loads((FIXTURES / "events" / "goal-status-changed.json").read_text())


@pytest.fixture
def db(fhir_profile, tmp_path):
    """A migrated database: SQLite with the medplum profile, PostgreSQL with hapi (as CI pairs them)."""
    yield from migrated_database("sqlite" if fhir_profile == "medplum" else "postgres", tmp_path)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _console_page(app, plan_id: str) -> str:
    """The console's plan page, signed in through its form (Flask's test client keeps the cookie)."""
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/sign-in").get_data(as_text=True))
    client.post("/console/sign-in", data={"api_key": KEY, "csrf_token": token.group(1)})
    return client.get(f"/console/plans/{plan_id}").get_data(as_text=True)


def _changed_words(page: str, conflict_id: int) -> str:
    found = re.search(rf'<span id="conflict-{conflict_id}-changed">(.*?)</span></p>', page, re.S)
    assert found, page
    return re.sub(r"<[^>]+>", "", found.group(1))


def _expected(goal: dict, by: str | None) -> dict:
    return {
        "resource": f"Goal/{goal['id']}",
        "version": goal["meta"]["versionId"],
        "changed_at": goal["meta"]["lastUpdated"],
        "changed_by": by,
    }


def _same(recorded: dict, expected: dict) -> None:
    """The recorded origin is the expected one; instants compared as instants (the server's own precision)."""
    assert {**recorded, "changed_at": None} == {**expected, "changed_at": None}
    assert _instant(recorded["changed_at"]) == _instant(expected["changed_at"])
    assert recorded["changed_at"].endswith("Z")


def test_a_conflict_records_the_ehr_version_time_and_source_and_the_api_and_console_show_them(db, fhir_profile_url):
    engine, _ = db
    live = Live(engine, fhir_profile_url, api_keys=(KEY,))
    try:
        proposed = goal_event()
        plan_id = proposed["data"]["plan_id"]
        assert live.post(proposed).status_code == 202
        live.worker.run_until_idle()  # the plan and its goal are on the server
        identifier = f"{live.settings.identifier_base}/goal|{plan_id}/goal-walk"
        ehr = FhirClient(fhir_profile_url, timeout=10)
        goal = ehr.find_one("Goal", {"identifier": identifier})

        # The EHR puts the goal on hold, saying where the edit came from; the team makes it active.
        ehr.request(
            "PUT", f"Goal/{goal['id']}", json={**goal, "lifecycleStatus": "on-hold", "meta": {"source": SOURCE}}
        )
        edited = ehr.read("Goal", goal["id"])
        event = copy.deepcopy(STATUS_EVENT)
        event["data"].update(plan_id=plan_id, goal_id="goal-walk", lifecycle_status="active")
        assert live.post(event).status_code == 202
        sync = SyncEngine(UnitOfWork(engine), live.fhir, live.settings, utcnow)
        assert sync.pull_plans([plan_id]).outcomes[plan_id] == "conflicted"

        (conflict,) = sync.status(plan_id).conflicts
        assert conflict["path"] == "goals[id=goal-walk].lifecycle_status"
        assert edited["meta"]["versionId"] != goal["meta"]["versionId"]
        _same(conflict["ehr"], _expected(edited, SOURCE))
        app = create_app(live.settings, engine)
        listed = app.test_client().get(f"/conflicts?plan={plan_id}", headers={"X-API-Key": KEY}).get_json()
        _same(listed[0]["ehr"], _expected(edited, SOURCE))
        words = _changed_words(_console_page(app, plan_id), conflict["id"])
        at = _instant(edited["meta"]["lastUpdated"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        assert words == f"Changed in the EHR by {SOURCE} on {at}."

        # The EHR changes the held field again, saying nothing of where from: the conflict's EHR side is now
        # that version, and who changed it is not recorded.
        again = ehr.read("Goal", goal["id"])
        ehr.request("PUT", f"Goal/{goal['id']}", json={**again, "lifecycleStatus": "cancelled", "meta": {}})
        latest = ehr.read("Goal", goal["id"])
        assert "source" not in latest["meta"]
        sync.pull_plans([plan_id])
        (moved,) = sync.status(plan_id).conflicts
        assert (moved["id"], moved["theirs"]) == (conflict["id"], "cancelled")
        _same(moved["ehr"], _expected(latest, None))
        at = _instant(latest["meta"]["lastUpdated"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        assert (
            _changed_words(_console_page(app, plan_id), conflict["id"])
            == f"Changed in the EHR by not recorded on {at}."
        )
    finally:
        live.close()


def test_a_goal_the_ehr_deleted_after_a_team_change_names_the_deleted_goal(db, fhir_profile_url):
    engine, _ = db
    live = Live(engine, fhir_profile_url, api_keys=(KEY,))
    try:
        proposed = goal_event()
        plan_id = proposed["data"]["plan_id"]
        assert live.post(proposed).status_code == 202
        live.worker.run_until_idle()
        identifier = f"{live.settings.identifier_base}/goal|{plan_id}/goal-walk"
        ehr = FhirClient(fhir_profile_url, timeout=10)
        goal = ehr.find_one("Goal", {"identifier": identifier})
        event = copy.deepcopy(STATUS_EVENT)
        event["data"].update(plan_id=plan_id, goal_id="goal-walk", lifecycle_status="active")
        assert live.post(event).status_code == 202
        ehr.request("DELETE", f"Goal/{goal['id']}")
        sync = SyncEngine(UnitOfWork(engine), live.fhir, live.settings, utcnow)
        assert sync.pull_plans([plan_id]).outcomes[plan_id] == "conflicted"
        (conflict,) = sync.status(plan_id).conflicts
        assert (conflict["path"], conflict["theirs"]) == ("goals[id=goal-walk]", None)
        assert conflict["ehr"] == {
            "resource": f"Goal/{goal['id']}",
            "version": None,
            "changed_at": None,
            "changed_by": None,
        }
    finally:
        live.close()


def test_an_adopted_plans_conflict_names_the_ehrs_goal_and_its_history_starts_with_the_adoption(
    tmp_path, fhir_profile_url
):
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    world = World(url, fhir_profile_url)
    world.sync.pull_patient(world.ehr.mrn)
    (first,) = plan_history(UnitOfWork(world.db), world.a)
    assert (first["source"], first["event_type"], first["paths"]) == ("ehr", "ehr.plan_changed", ["*"])
    assert first["ehr"]["outcome"] == "new" and first["ehr"]["resource_id"] == world.ehr.a["id"]

    sleep = f"goal-{world.ehr.sleep['id']}"
    world.ehr.edit(world.ehr.sleep, lifecycleStatus="on-hold", meta={"source": SOURCE})
    edited = world.ehr.read(world.ehr.sleep)
    assert world.team("goal.status_changed", plan_id=world.a, goal_id=sleep, lifecycle_status="completed") == 202
    world.drain()  # the push meets the EHR's version, re-reads, and records the conflict
    (conflict,) = world.sync.status(world.a).conflicts
    assert conflict["path"] == f"goals[id={sleep}].lifecycle_status"
    _same(conflict["ehr"], _expected(edited, SOURCE))


def test_conflicts_recorded_before_the_migration_are_kept_with_no_origin(engine):
    from alembic import command

    from service.store.db import alembic_config

    command.downgrade(alembic_config(engine), "0010")
    with engine.begin() as conn:
        assert "ehr_version" not in {c["name"] for c in sa.inspect(conn).get_columns("sync_conflicts")}
        conn.execute(
            sa.text(
                "INSERT INTO sync_conflicts (plan_id, path, base, ours, theirs, status, created_at) "
                "VALUES ('plan-1', 'what_matters', '\"a\"', '\"b\"', '\"c\"', 'open', :at)"
            ),
            {"at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC)},
        )
    upgrade(engine)
    with UnitOfWork(engine) as uow:
        (row,) = uow.sync.conflicts("plan-1")
        kept = conflict_dict(row)
        assert (kept["path"], kept["ours"], kept["theirs"], kept["ehr"]) == ("what_matters", "b", "c", None)


def test_an_imported_plans_history_starts_with_its_import_and_no_subscriber_hears_of_it(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
    upgrade(engine)
    conf = settings()
    now = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    with UnitOfWork(engine) as uow:
        uow.subscriptions.add("https://team.example.org/hook", ["*"], "whsec_" + "A" * 32, None, now)
        uow.commit()
    document = json.loads((FIXTURES / "plans" / "cardiac-rehab-checkins.json").read_text())
    plan = import_document(UnitOfWork(engine), document, conf, now)
    (first,) = plan_history(UnitOfWork(engine), plan.id)
    assert first["sequence"] == 1 and first["event_type"] == "plan.imported"
    assert (first["source"], first["paths"], first["paths_total"], first["plan_version"]) == (
        "team",
        ["*"],
        1,
        plan.version,
    )
    assert first["team"] == {"sender": None, "event_id": None, "members": []}

    document["what_matters"] = "Walking to the shop on my own."
    replaced = import_document(UnitOfWork(engine), document, conf, now, replace=True)
    entries = plan_history(UnitOfWork(engine), plan.id)
    assert [(e["sequence"], e["event_type"], e["plan_version"]) for e in entries] == [
        (1, "plan.imported", plan.version),
        (2, "plan.imported", replaced.version),
    ]
    assert entries[1]["paths"] == ["what_matters"]
    with UnitOfWork(engine) as uow:
        assert uow.deliveries.for_plan(plan.id, delivered_shown=10)[0] == []  # history only: nothing delivered
    app = create_app(settings(api_keys=(KEY,)), engine)
    page = _console_page(app, plan.id)
    assert page.count("from an import (planbridge plans import)") == 2
