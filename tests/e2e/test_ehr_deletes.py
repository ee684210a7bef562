"""Deletes in the EHR are changes (issue #13): a Goal deleted or marked entered-in-error, a step removed from the
CarePlan, a member removed from the CareTeam is recorded in the plan (kept, with its agreements and notes,
marked), reaches team systems as `ehr.plan_changed` with `change.removed`, and is a conflict only when the team
changed that item too. A later push never writes it again, nor loops on the server's refusals.

On the real local FHIR server in both profiles (HAPI-like and Medplum-like), on SQLite.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from tests.sync_model_support import SyncWorld


@pytest.fixture
def world(tmp_path, fhir_profile_url):
    engine = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
    upgrade(engine)
    world = SyncWorld(engine, fhir_profile_url)
    with UnitOfWork(engine) as uow:
        uow.subscriptions.add("https://team.example.org/hook", ["*"], "whsec_x", None, world.clock())
        uow.commit()
    yield world
    engine.dispose()


def _pushed(world: SyncWorld, fixture: str = "knee-rehabilitation.json") -> str:
    plan_id = world.add_plan(fixture)
    assert world.sync.push(plan_id).status == "in_sync"
    world.sync.pull_plans([plan_id])  # the plan as it maps back: the fixed point of push and pull
    return plan_id


def _ehr_changes(world: SyncWorld, plan_id: str) -> list[dict[str, Any]]:
    with UnitOfWork(world.db) as uow:
        deliveries = uow.deliveries.for_plan(plan_id, 100)[0]
    return [d.payload["data"]["change"] for d in deliveries if d.payload["type"] == "ehr.plan_changed"]


def _no_failed_outbox(world: SyncWorld) -> None:
    assert [(r.kind, r.status, r.last_error) for r in world.outbox() if r.last_error or r.status == "dead"] == []


def test_a_goal_the_ehr_deletes_is_recorded_in_the_plan_not_a_conflict_and_never_written_again(world):
    plan_id = _pushed(world)
    goal = world.ehr_goal(plan_id, "goal-exercise")
    world.ehr_delete(f"Goal/{goal['id']}")

    assert world.sync.pull_plans([plan_id]).outcomes[plan_id] == "updated"
    kept = world.plan(plan_id).goal("goal-exercise")
    assert kept is not None, "the goal the EHR deleted was dropped from the plan"
    assert kept.lifecycle_status == "entered-in-error"
    assert kept.removed_in_ehr is not None and kept.removed_in_ehr.how == "deleted"
    assert kept.removed_in_ehr.version == goal["meta"]["versionId"]
    assert [a.member_id for a in kept.agreements] == ["patient"]  # its agreements stay
    assert world.conflicts(plan_id) == [] and world.sync.status(plan_id).status == "in_sync"
    (heard,) = [c for c in _ehr_changes(world, plan_id) if c.get("removed")]
    assert heard["removed"] == [{"kind": "goal", "id": "goal-exercise", "how": "deleted"}]
    assert "conflicts" not in heard

    # The team goes on: the plan is pushed; the deleted goal is neither recreated nor written to.
    assert world.team("plan.updated", plan_id=plan_id, title="After the EHR's delete")[0] == 202
    before = world.client.requests_sent
    result = world.sync.push(plan_id)
    assert result.status == "in_sync" and world.client.requests_sent - before <= 6
    assert world.find("Goal", "goal", f"{plan_id}/goal-exercise") is None, "the push recreated the deleted goal"
    assert world.find("CarePlan", "plan", plan_id)["title"] == "After the EHR's delete"
    assert world.sync.push(plan_id).requests == 0  # nothing left to send: no loop
    assert world.sync.pull_plans([plan_id]).outcomes[plan_id] == "unchanged"
    assert world.plan(plan_id).goal("goal-exercise").removed_in_ehr is not None
    _no_failed_outbox(world)


def test_a_push_before_any_pull_of_the_delete_records_it_and_does_not_loop(world):
    plan_id = _pushed(world)
    goal = world.ehr_goal(plan_id, "goal-walk")
    world.ehr_delete(f"Goal/{goal['id']}")
    assert world.team("note.added", plan_id=plan_id, text="Walked twice", author="patient")[0] == 202

    before = world.client.requests_sent
    world.sync.push(plan_id)
    for _ in range(3):  # the worker drains what is queued; nothing fails, nothing loops
        world.tick(4000)
        world.worker.process_one()
    assert world.client.requests_sent - before <= 12
    assert world.find("Goal", "goal", f"{plan_id}/goal-walk") is None, "the push recreated the deleted goal"
    world.sync.pull_plans([plan_id])  # (the push may not have needed to read the plan: the next pull does)
    assert world.conflicts(plan_id) == []
    kept = world.plan(plan_id).goal("goal-walk")
    assert kept.lifecycle_status == "entered-in-error" and kept.removed_in_ehr.how == "deleted"
    assert [c.id for c in kept.check_ins] == ["dist-1", "dist-2"]  # its check-ins stay in the plan
    assert world.find("Goal", "goal", f"{plan_id}/goal-walk") is None
    assert world.sync.status(plan_id).status == "in_sync"
    assert world.sync.push(plan_id).requests == 0
    _no_failed_outbox(world)


def test_a_goal_the_ehr_deletes_after_the_team_changed_it_is_a_conflict(world):
    plan_id = _pushed(world)
    assert (
        world.team("goal.status_changed", plan_id=plan_id, goal_id="goal-exercise", lifecycle_status="on-hold")[0]
        == 202
    )
    goal = world.ehr_goal(plan_id, "goal-exercise")
    world.ehr_delete(f"Goal/{goal['id']}")

    assert world.sync.pull_plans([plan_id]).outcomes[plan_id] == "conflicted"
    (conflict,) = world.open_conflicts(plan_id)
    assert conflict["path"] == "goals[id=goal-exercise]" and conflict["theirs"] is None
    assert conflict["ours"]["lifecycle_status"] == "on-hold"
    assert world.plan(plan_id).goal("goal-exercise").removed_in_ehr is None  # the team's version, until decided
    assert world.sync.push(plan_id).requests == 0 or world.find("Goal", "goal", f"{plan_id}/goal-exercise") is None
    assert world.find("Goal", "goal", f"{plan_id}/goal-exercise") is None

    world.sync.resolve(conflict["id"], "theirs")  # the team accepts the deletion: the goal stays, marked
    kept = world.plan(plan_id).goal("goal-exercise")
    assert kept is not None and kept.removed_in_ehr is not None and kept.lifecycle_status == "entered-in-error"
    assert world.sync.push(plan_id).status == "in_sync"
    assert world.find("Goal", "goal", f"{plan_id}/goal-exercise") is None


def test_a_goal_the_ehr_marks_entered_in_error_is_recorded_and_heard_of(world):
    plan_id = _pushed(world)
    goal = world.ehr_goal(plan_id, "goal-flexion")
    world.ehr_edit(f"Goal/{goal['id']}", lambda g: g.update(lifecycleStatus="entered-in-error"))

    world.sync.pull_plans([plan_id])
    kept = world.plan(plan_id).goal("goal-flexion")
    assert kept.lifecycle_status == "entered-in-error" and kept.agreements
    assert world.conflicts(plan_id) == [] and world.sync.status(plan_id).status == "in_sync"
    (heard,) = [c for c in _ehr_changes(world, plan_id) if c.get("removed")]
    assert heard["removed"] == [{"kind": "goal", "id": "goal-flexion", "how": "entered-in-error"}]


def test_a_goal_the_ehr_marks_entered_in_error_after_the_team_changed_it_is_a_conflict(world):
    plan_id = _pushed(world)
    assert (
        world.team("note.added", plan_id=plan_id, goal_id="goal-flexion", text="Bent to 95", author="patient")[0] == 202
    )
    goal = world.ehr_goal(plan_id, "goal-flexion")
    world.ehr_edit(f"Goal/{goal['id']}", lambda g: g.update(lifecycleStatus="entered-in-error"))

    assert world.sync.pull_plans([plan_id]).outcomes[plan_id] == "conflicted"
    (conflict,) = world.open_conflicts(plan_id)
    assert conflict["path"] == "goals[id=goal-flexion]"
    assert conflict["theirs"]["lifecycle_status"] == "entered-in-error"
    world.sync.push(plan_id)
    assert world.ehr_goal(plan_id, "goal-flexion")["lifecycleStatus"] == "entered-in-error"  # not overwritten


def test_a_step_the_ehr_removes_from_the_careplan_is_recorded_and_not_put_back(world):
    plan_id = _pushed(world)
    step = world.plan(plan_id).steps[0]
    careplan = world.find("CarePlan", "plan", plan_id)
    activities = len(careplan["activity"])
    world.ehr_edit(f"CarePlan/{careplan['id']}", lambda c: c.update(activity=c["activity"][1:]))

    world.sync.pull_plans([plan_id])
    kept = world.plan(plan_id).step(step.id)
    assert kept is not None and kept.removed_in_ehr is not None and kept.removed_in_ehr.how == "removed"
    assert kept.title == step.title and world.conflicts(plan_id) == []
    (heard,) = [c for c in _ehr_changes(world, plan_id) if c.get("removed")]
    assert heard["removed"] == [{"kind": "step", "id": step.id, "how": "removed"}]

    assert world.team("plan.updated", plan_id=plan_id, title="Still going")[0] == 202
    assert world.sync.push(plan_id).status == "in_sync"
    assert len(world.find("CarePlan", "plan", plan_id)["activity"]) == activities - 1, "the push put the step back"
    assert world.sync.push(plan_id).requests == 0


def test_a_step_the_ehr_marks_entered_in_error_is_heard_of(world):
    plan_id = _pushed(world)
    step = world.plan(plan_id).steps[0]
    careplan = world.find("CarePlan", "plan", plan_id)

    def mark(c: dict[str, Any]) -> None:
        c["activity"][0]["detail"]["status"] = "entered-in-error"

    world.ehr_edit(f"CarePlan/{careplan['id']}", mark)
    world.sync.pull_plans([plan_id])
    assert world.plan(plan_id).step(step.id).status == "entered-in-error"
    (heard,) = [c for c in _ehr_changes(world, plan_id) if c.get("removed")]
    assert heard["removed"] == [{"kind": "step", "id": step.id, "how": "entered-in-error"}]


def test_a_member_the_ehr_removes_from_the_careteam_is_recorded_and_not_put_back(world):
    plan_id = _pushed(world)
    team = world.find("CareTeam", "careteam", plan_id)
    participants = len(team["participant"])
    gone = team["participant"][-1]
    member_id = gone.get("id")
    assert member_id and world.plan(plan_id).member(member_id) is not None
    world.ehr_edit(f"CareTeam/{team['id']}", lambda t: t.update(participant=t["participant"][:-1]))

    world.sync.pull_plans([plan_id])
    kept = world.plan(plan_id).member(member_id)
    assert kept is not None and kept.in_team is False, "the member the EHR removed was dropped or kept on the team"
    (heard,) = [c for c in _ehr_changes(world, plan_id) if c.get("removed")]
    assert heard["removed"] == [{"kind": "member", "id": member_id, "how": "removed"}]
    assert world.conflicts(plan_id) == []

    assert world.team("plan.updated", plan_id=plan_id, title="Smaller team")[0] == 202
    assert world.sync.push(plan_id).status == "in_sync"
    assert len(world.find("CareTeam", "careteam", plan_id)["participant"]) == participants - 1
    assert world.sync.push(plan_id).requests == 0
