"""Deterministic cases found by the model-based sync test (test_sync_model.py), each reduced to its steps.

Every test runs against the real local FHIR server, on SQLite and on PostgreSQL. The semantics they
check: a field with an open conflict keeps the server's value on the server until someone resolves
the conflict; `conflicted` holds exactly while a conflict is open; a push of a conflicted plan still
sends every other field; nothing planbridge has not merged is written over.
"""

import pytest

from service.store.uow import UnitOfWork
from tests.support import goal_event
from tests.sync_model_support import (
    SyncWorld,
    diff_paths,
    get_at,
    held_out,
    related,
    without_refs_to,
    without_removed,
)


@pytest.fixture
def world(engine, fhir_base_url):
    return SyncWorld(engine, fhir_base_url)


def _plan_with_a_proposed_goal(world: SyncWorld) -> tuple[str, str]:
    """goal.proposed opens a plan; the patient agrees; the plan is pushed."""
    event = goal_event(goal_id="goal-walk")
    plan_id = event["data"]["plan_id"]
    assert world.team("goal.proposed", **event["data"])[0] == 202
    agreed, _ = world.team(
        "agreement.recorded", plan_id=plan_id, goal_id="goal-walk", member_id="patient", status="agree"
    )
    assert agreed == 202
    assert world.sync.push(plan_id).status == "in_sync"
    return plan_id, "goal-walk"


def test_a_pull_after_a_conflict_does_not_let_the_next_push_overwrite_the_ehr(world):
    """Issue #12: the second pull took the EHR's version as the merge base and the push overwrote it."""
    plan_id, goal_id = _plan_with_a_proposed_goal(world)  # the outbox worker is not running
    assert world.team("goal.status_changed", plan_id=plan_id, goal_id=goal_id, lifecycle_status="active")[0] == 202
    goal = world.ehr_goal(plan_id, goal_id)
    world.ehr_edit(f"Goal/{goal['id']}", lambda g: g.update(lifecycleStatus="on-hold"))

    assert world.sync.push(plan_id).status == "conflicted"  # 409, pulled, merged: both changed the status
    (conflict,) = world.open_conflicts(plan_id)
    assert conflict["path"] == f"goals[id={goal_id}].lifecycle_status"
    assert (conflict["ours"], conflict["theirs"]) == ("active", "on-hold")

    world.sync.pull_plans([plan_id])
    status = world.sync.status(plan_id)
    assert status.status == "conflicted", f"a pull dropped the plan to {status.status} with the conflict open"
    assert [c["id"] for c in status.conflicts if c["status"] == "open"] == [conflict["id"]]

    world.sync.push(plan_id)
    assert world.ehr_goal(plan_id, goal_id)["lifecycleStatus"] == "on-hold", "the push overwrote the EHR's edit"
    assert world.plan(plan_id).goal(goal_id).lifecycle_status == "active"  # the team's value, kept in the plan


def _pushed_plan(world: SyncWorld, fixture: str = "knee-rehabilitation.json") -> str:
    plan_id = world.add_plan(fixture)
    assert world.sync.push(plan_id).status == "in_sync"
    world.sync.pull_plans([plan_id])  # the plan as it maps back from FHIR: the fixed point of push and pull
    return plan_id


def _differences(world: SyncWorld, plan_id: str) -> list[str]:
    """Return the paths where the plan and the server differ, except under (or over) an open conflict's path
    (references to a goal a conflict holds off the server included)."""
    open_ = world.open_conflicts(plan_id)
    server = world.server(plan_id)
    plan = held_out(without_refs_to(world.plan_doc(plan_id), server.resources), open_, server.doc)
    return [p for p in diff_paths(plan, server.doc) if not any(related(p, c["path"]) for c in open_)]


def test_a_step_the_team_adds_toward_a_goal_the_ehr_deleted_does_not_block_every_push(world):
    """Found by the model: the push's 404 led to a pull that merged the deletion (the team had not changed the
    goal itself), leaving a step that names a goal the plan no longer has; every push then failed with a
    MappingError, so the outbox retried it forever and nothing more reached the server."""
    plan_id = _pushed_plan(world)
    goal = world.ehr_goal(plan_id, "goal-exercise")
    world.ehr_delete(f"Goal/{goal['id']}")
    status, _ = world.team(
        "step.added", plan_id=plan_id, step_id="step-new", title="Stairs", goal_ids=["goal-exercise"]
    )
    assert status == 202

    first = world.sync.push(plan_id)  # 404 on Goal/{id} (when the push writes it): re-read, merge, push again
    second = world.sync.push(plan_id)
    assert {first.status, second.status} <= {"in_sync", "conflicted"}
    world.sync.pull_plans([plan_id])  # settled: the deletion is read (#13: recorded in the plan, not a conflict)
    world.sync.push(plan_id)
    assert world.sync.status(plan_id).last_error is None
    assert _differences(world, plan_id) == []


def test_a_goal_the_ehr_deleted_after_an_unrecorded_push_created_it_is_not_brought_back(world):
    """Found by the model: a push created a goal and died before recording it; the EHR deleted that Goal. The
    next push reconciled by pulling, but the merge base did not know the goal had reached the server, so the
    deletion looked like a goal not pushed yet and the push created it again (a new Goal, no conflict)."""
    plan_id = _pushed_plan(world)
    revised = {"id": "goal-new", "description": "Bend the knee to 120 degrees"}
    status, _ = world.team(
        "goal.revised", plan_id=plan_id, replaces="goal-flexion", goal=revised, revised_by={"kind": "patient"}
    )
    assert status == 202
    assert world.kill_push(plan_id) == "200"  # the transaction was applied; its outcome was never recorded
    created = world.ehr_goal(plan_id, "goal-new")
    world.ehr_delete(f"Goal/{created['id']}")

    world.sync.push(plan_id)
    world.sync.push(plan_id)
    again = world.find("Goal", "goal", f"{plan_id}/goal-new")
    assert again is None, f"the EHR deleted Goal/{created['id']}; the push created it again as Goal/{again['id']}"


def test_pulling_a_conflicted_plan_whose_last_goal_the_ehr_deleted_queues_no_push_that_sends_nothing(world):
    """Found by the model (settling kept finding work): with the plan's only goal deleted in the EHR and changed
    by the team, every pull queued a push, and every such push sent nothing. The pull compares the document it
    would send (the held goal masked out: `goals: []`) with the server's (no `goals` at all)."""
    plan_id = _pushed_plan(world, "minimal.json")
    goal = world.ehr_goal(plan_id, "goal-sleep")
    world.ehr_delete(f"Goal/{goal['id']}")
    checkin = {"checkin_id": "c1", "at": "2026-11-22T09:30:00Z", "measure": {"display": "Sleep (0-10)"}, "integer": 6}
    assert world.team("checkin.recorded", plan_id=plan_id, goal_id="goal-sleep", **checkin)[0] == 202
    assert world.sync.push(plan_id).status == "conflicted"  # 404, re-read: the goal is held by a conflict
    world.worker.run_until_idle()

    world.sync.pull_plans([plan_id])
    waiting = [row.id for row in world.outbox() if row.status == "pending"]
    sent = world.requests_sent
    world.worker.run_until_idle()
    assert waiting == [] or world.requests_sent > sent, "the pull queued a push that had nothing to send"


def test_a_goal_brought_back_after_the_ehr_deleted_it_names_its_check_ins_current_versions(
    engine, fhir_profile, fhir_profile_url
):
    """Found by the model's soak run: a push whose outcome was lost rewrote a goal's check-ins; the EHR then
    deleted the goal, so no pull could reach those Observations and their links kept the old versions. When
    the team took its goal back, every push named a stale Observation version: 409, re-read, 409, forever.
    On each server profile: on medplum a stale If-Match answers 412, and pushes over 8 entries are split."""
    world = SyncWorld(engine, fhir_profile_url)
    plan_id = _pushed_plan(world, "young-person-anxiety.json")
    # (the team changes the goal, so its deletion in the EHR is a conflict: #13 records an unchanged one instead)
    assert world.team("note.added", plan_id=plan_id, goal_id="goal-bus", text="Team note", author="patient")[0] == 202
    assert world.kill_push(plan_id) == "200"  # applied (the check-ins rewritten too), never recorded
    goal = world.ehr_goal(plan_id, "goal-bus")
    world.ehr_delete(f"Goal/{goal['id']}")

    assert world.sync.push(plan_id).status == "conflicted"  # reconciled first: the goal is held
    (conflict,) = world.open_conflicts(plan_id)
    assert conflict["path"] == "goals[id=goal-bus]"
    world.sync.resolve(conflict["id"], "ours")
    result = world.sync.push(plan_id)
    # one transaction: no 409/412 and re-read. On medplum the Bundle (13 entries, conditional ones among them:
    # the goal is created again, the people always are) is split in two; its limits were read by the first push
    assert (result.status, result.requests) == ("in_sync", {"hapi": 1, "medplum": 2}[fhir_profile]), result
    assert world.ehr_goal(plan_id, "goal-bus")["id"] != goal["id"]  # written again, as a new Goal
    assert _differences(world, plan_id) == []


def test_an_ehr_edit_that_puts_back_the_value_a_lost_push_replaced_is_not_written_over(world):
    """Found by the model's soak run: a push's answer was lost after it set a goal to `cancelled`; the EHR then
    saved an older copy of the Goal (its status `on-hold` again). The re-read took `on-hold` for the value both
    sides last agreed on, so the next push wrote `cancelled` over the clinician's save. When the outcome of a
    push is unknown, a field the two readings (applied or not) merge differently is a conflict."""
    plan_id, goal_id = _plan_with_a_proposed_goal(world)
    assert world.team("goal.status_changed", plan_id=plan_id, goal_id=goal_id, lifecycle_status="on-hold")[0] == 202
    assert world.sync.push(plan_id).status == "in_sync"
    goal = world.ehr_goal(plan_id, goal_id)
    older = dict(goal)  # the EHR's copy of the Goal, read now: on-hold
    assert world.team("goal.status_changed", plan_id=plan_id, goal_id=goal_id, lifecycle_status="cancelled")[0] == 202
    assert world.kill_push(plan_id) == "200"  # applied: the server says cancelled; its answer never came back
    assert world.ehr_goal(plan_id, goal_id)["lifecycleStatus"] == "cancelled"
    world.ehr_put({**older, "statusReason": "saved from an older screen"}, None)  # no If-Match: on-hold again

    world.sync.push(plan_id)
    assert world.ehr_goal(plan_id, goal_id)["lifecycleStatus"] == "on-hold", "the push wrote over the EHR's save"
    (conflict,) = world.open_conflicts(plan_id)
    assert conflict["path"] == f"goals[id={goal_id}].lifecycle_status"
    assert (conflict["ours"], conflict["theirs"]) == ("cancelled", "on-hold")
    assert world.sync.status(plan_id).status == "conflicted"


def test_recording_deletes_does_not_reorder_a_list_only_the_server_changed(world):
    """Found by the model (#13, settling never settled): the pull's recording of EHR deletes rebuilt the team in
    the plan's order even where only the server had changed it (a CareTeam listing a new nurse before the people
    off the team), so every pull found the plan different from the server and queued a push, forever."""
    plan_id = _pushed_plan(world)
    world.ehr_add_goal(plan_id, "EHR goal")
    assert (
        world.team(
            "member.joined", plan_id=plan_id, member_id="nurse-2", kind="practitioner", role="nurse", name="Nurse 3"
        )[0]
        == 202
    )
    world.sync.push(plan_id)  # 409 (the EHR changed the CarePlan), re-read, merged, pushed
    world.sync.push(plan_id)
    outcomes = [world.sync.pull_plans([plan_id]).outcomes[plan_id] for _ in range(2)]
    assert outcomes[-1] == "unchanged", outcomes
    sent = world.requests_sent
    world.worker.run_until_idle()
    assert world.sync.push(plan_id).requests == 0 and world.requests_sent == sent


def test_taking_ours_for_a_goal_the_ehr_deleted_brings_back_the_goal_and_the_steps_links_to_it(world):
    """Found by the model (its oracle, not the service): the team changed a goal, the EHR deleted it, the
    conflict was resolved taking ours. The push recreates the goal and puts back the step's link to it,
    which the deletion had taken from the server's reading: that is the resolution, not an overwrite."""
    plan_id = _pushed_plan(world, "eating-disorder-recovery.json")
    status, _ = world.team("goal.status_changed", plan_id=plan_id, goal_id="goal-meals", lifecycle_status="on-hold")
    assert status == 202
    deleted = world.ehr_goal(plan_id, "goal-meals")
    world.ehr_delete(f"Goal/{deleted['id']}")

    world.sync.pull_plans([plan_id])
    [conflict] = world.open_conflicts(plan_id)
    assert conflict["path"] == "goals[id=goal-meals]"  # both changed it: held, not dropped

    world.sync.resolve(conflict["id"], "ours")
    assert world.sync.push(plan_id).status == "in_sync"

    again = world.ehr_goal(plan_id, "goal-meals")
    assert again["id"] != deleted["id"] and again["lifecycleStatus"] == "on-hold"
    step = next(s for s in world.plan_doc(plan_id)["steps"] if s["id"] == "step-meal-plan")
    assert step["goal_ids"] == ["goal-weight", "goal-meals"]
    assert get_goal_ids(world, plan_id, "step-meal-plan") == ["goal-weight", "goal-meals"]
    assert world.open_conflicts(plan_id) == []


def get_goal_ids(world: SyncWorld, plan_id: str, step_id: str) -> list[str]:
    """The goal ids a step names on the server, as planbridge reads the server back."""
    return next(s for s in world.server(plan_id).doc["steps"] if s["id"] == step_id).get("goal_ids")


def test_a_person_only_a_deleted_goal_named_does_not_keep_every_pull_pushing(world):
    """Found by the model: the EHR deleted two goals; the plan kept them (recorded as removed) and with them a
    practitioner off the team whom only one of them named. Each push left that person out (nothing on the
    server names them), each pull saw the plan "differ" and queued a push: a request per pull, for ever."""
    plan_id = _pushed_plan(world)
    world.ehr_add_goal(plan_id, "EHR goal 1")
    for goal_id in ("goal-exercise", "goal-flexion"):
        world.ehr_delete(f"Goal/{world.ehr_goal(plan_id, goal_id)['id']}")

    world.sync.pull_plans([plan_id])
    world.sync.push(plan_id)

    assert world.sync.pull_plans([plan_id]).outcomes[plan_id] == "unchanged"
    assert world.sync.push(plan_id).requests == 0
    kept = {g["id"]: g for g in world.plan_doc(plan_id)["goals"]}
    assert kept["goal-flexion"]["removed_in_ehr"]["how"] == "deleted"  # kept in the plan, recorded as removed


def test_taking_a_value_for_a_goal_the_ehr_deleted_brings_back_the_person_off_the_team_only_it_named(world):
    """Found by the model's soak run (its oracle, not the service): the EHR deleted the only goal naming a
    surgeon off the team (the author of its note), so the server's reading lost the surgeon too; the team had
    changed that goal, and the conflict was resolved with a value. The push writes the goal back and, with it,
    the person it names: part of the resolution, and afterwards the plan and the server agree."""
    plan_id = _pushed_plan(world)
    status, _ = world.team("goal.status_changed", plan_id=plan_id, goal_id="goal-flexion", lifecycle_status="on-hold")
    assert status == 202
    flexion = next(g for g in world.plan_doc(plan_id)["goals"] if g["id"] == "goal-flexion")
    others = [g for g in world.plan_doc(plan_id)["goals"] if g["id"] != "goal-flexion"]
    (surgeon,) = [
        m["id"]
        for m in world.plan_doc(plan_id)["team"]
        if m.get("in_team") is False
        and f'"{m["id"]}"' in str(flexion).replace("'", '"')
        and f'"{m["id"]}"' not in str(others).replace("'", '"')
    ]
    world.ehr_delete(f"Goal/{world.ehr_goal(plan_id, 'goal-flexion')['id']}")
    assert surgeon not in {m["id"] for m in world.server(plan_id).doc.get("team", [])}  # nothing names them

    world.sync.pull_plans([plan_id])
    [conflict] = world.open_conflicts(plan_id)
    assert conflict["path"] == "goals[id=goal-flexion]"
    value = {k: v for k, v in conflict["base"].items() if k != "removed_in_ehr"}
    world.sync.resolve(conflict["id"], "value", value)
    assert world.sync.push(plan_id).status == "in_sync"

    assert world.ehr_goal(plan_id, "goal-flexion")["lifecycleStatus"] == value["lifecycle_status"]
    assert surgeon in {m["id"] for m in world.server(plan_id).doc["team"]}  # named again by the goal
    assert world.open_conflicts(plan_id) == []
    assert world.sync.pull_plans([plan_id]).outcomes[plan_id] == "unchanged"
    assert world.sync.push(plan_id).requests == 0


def test_a_field_left_unsure_by_a_lost_push_keeps_the_servers_value_until_it_is_resolved(world):
    """Found by the model's soak run (80 examples x 40 steps, PostgreSQL, hapi): after a push whose answer was
    lost set the title to B, the team set it back to A. The re-read could not tell whether the server's B was
    the EHR's or our own lost write, and opened a conflict; but the conflict's EHR side was taken from the
    second reading's merge (A), not from the server (B), so the push sent A as "the server's value" and wrote
    over B while the conflict was open. The EHR side of such a conflict is what the server holds."""
    plan_id, _ = _plan_with_a_proposed_goal(world)
    assert world.team("plan.updated", plan_id=plan_id, title="Title A")[0] == 202
    assert world.sync.push(plan_id).status == "in_sync"
    assert world.team("plan.updated", plan_id=plan_id, title="Title B")[0] == 202
    assert world.kill_push(plan_id) == "200"  # applied: the server says B; its answer never came back
    assert world.team("plan.updated", plan_id=plan_id, title="Title A")[0] == 202

    world.sync.push(plan_id)
    assert world.server(plan_id).doc["title"] == "Title B", "the push wrote over a value it could not place"
    (conflict,) = world.open_conflicts(plan_id)
    assert (conflict["path"], conflict["ours"], conflict["theirs"]) == ("title", "Title A", "Title B")
    assert world.sync.status(plan_id).status == "conflicted"


def test_a_step_moved_from_a_goal_the_ehr_deleted_to_its_revision_is_linked_on_the_server(world):
    """Found by the model's soak run (its oracle, not the service): the team changed a goal, the EHR deleted it
    (so the server's reading of the steps pursuing it lost the link), then the team revised the goal. The steps
    now pursue the revision, and the push writes that link: it brings back nothing the EHR deleted (the old
    goal stays deleted and its conflict stays open), so it is no overwrite."""
    plan_id = _pushed_plan(world, "cardiac-rehab-checkins.json")
    status, _ = world.team("goal.status_changed", plan_id=plan_id, goal_id="goal-steps", lifecycle_status="planned")
    assert status == 202
    deleted = world.ehr_goal(plan_id, "goal-steps")
    world.ehr_delete(f"Goal/{deleted['id']}")
    assert get_goal_ids(world, plan_id, "step-pedometer") is None

    assert world.sync.pull_plans([plan_id]).outcomes[plan_id] == "conflicted"
    [conflict] = world.open_conflicts(plan_id)
    assert conflict["path"] == "goals[id=goal-steps]"
    revision = {"id": "goal-m2", "description": "Walk 20 minutes a day", "priority": "high-priority"}
    status, _ = world.team(
        "goal.revised", plan_id=plan_id, replaces="goal-steps", goal=revision, revised_by={"kind": "patient"}
    )
    assert status == 202

    assert world.sync.push(plan_id).status == "conflicted"
    assert [c["id"] for c in world.open_conflicts(plan_id)] == [conflict["id"]]
    assert get_goal_ids(world, plan_id, "step-pedometer") == ["goal-m2"]
    assert world.ehr_goal(plan_id, "goal-m2")["description"]["text"] == "Walk 20 minutes a day"
    assert world.find("Goal", "goal", f"{plan_id}/goal-steps") is None, "the goal the EHR deleted came back"


def test_taking_ours_for_a_goal_the_ehr_took_out_of_the_careplan_and_deleted_creates_it_anew(world):
    """Known bug (a whole-goal conflict resolved 'ours'): the EHR took a Goal out of the CarePlan and then deleted
    it, after the team changed the goal. The CarePlan no longer names the Goal, so no pull dropped the goal's
    link, and the push after the resolution wrote the goal by that link (`PUT Goal/<id>` + If-Match onto the
    deleted id): 404, re-read, 404 for ever, the plan never in sync (a server that allows it would resurrect the
    deleted Goal). docs/sync.md: `ours` writes the item again, a new resource; the resolution now forgets the link,
    so the push creates the goal anew (conditional on planbridge's identifier) and the link follows."""
    plan_id = _pushed_plan(world, "eating-disorder-recovery.json")
    status, _ = world.team("goal.status_changed", plan_id=plan_id, goal_id="goal-meals", lifecycle_status="on-hold")
    assert status == 202
    deleted = world.ehr_goal(plan_id, "goal-meals")
    ref = f"Goal/{deleted['id']}"

    def take_out(careplan: dict) -> None:
        careplan["goal"] = [r for r in careplan.get("goal", []) if r.get("reference") != ref]
        for activity in careplan.get("activity", []):
            detail = activity.get("detail", {})
            detail["goal"] = [r for r in detail.get("goal", []) if r.get("reference") != ref]
            if not detail["goal"]:
                del detail["goal"]

    careplan = world.find("CarePlan", "plan", plan_id)
    world.ehr_edit(f"CarePlan/{careplan['id']}", take_out)
    world.ehr_delete(ref)
    world.sync.pull_plans([plan_id])
    [conflict] = world.open_conflicts(plan_id)
    assert (conflict["path"], conflict["theirs"]) == ("goals[id=goal-meals]", None)

    world.sync.resolve(conflict["id"], "ours")
    assert world.sync.push(plan_id).status == "in_sync"
    assert world.sync.status(plan_id).last_error is None

    again = world.ehr_goal(plan_id, "goal-meals")
    assert again["id"] != deleted["id"] and again["lifecycleStatus"] == "on-hold"
    linked = {r["key"]: r["id"] for r in world.sync.status(plan_id).resources}
    assert linked["goal:goal-meals"] == again["id"]
    named = [r["reference"] for r in world.find("CarePlan", "plan", plan_id).get("goal", [])]
    assert named.count(f"Goal/{again['id']}") == 1 and ref not in named
    assert get_goal_ids(world, plan_id, "step-meal-plan") == ["goal-weight", "goal-meals"]
    assert world.sync.pull_plans([plan_id]).outcomes[plan_id] == "unchanged"
    assert world.open_conflicts(plan_id) == []


def test_a_conflict_the_team_converged_on_closes_when_the_ehr_then_deletes_the_goal(world):
    """Found by the model's soak run (a model bug, not planbridge's): a goal's status in conflict (the team's
    `active`, the EHR's `on-hold`); the team took the EHR's value; then the EHR deleted the Goal. The pull closes
    the conflict `converged` (the team's value is the one the conflict showed) and, the team's goal being the
    server's last one, records the deletion as for a goal the team did not change (docs/sync.md, "The conflict
    lifecycle" and "Deletes in the EHR"): no conflict, `in_sync`, the Goal not written again. The model took the
    plan's `entered-in-error` against no Goal on the server for sides that disagree; an item the plan records as
    deleted in the EHR is, by design, never on the server (`without_removed`)."""
    plan_id, goal_id = _plan_with_a_proposed_goal(world)
    assert world.team("goal.status_changed", plan_id=plan_id, goal_id=goal_id, lifecycle_status="active")[0] == 202
    goal = world.ehr_goal(plan_id, goal_id)
    world.ehr_edit(f"Goal/{goal['id']}", lambda g: g.update(lifecycleStatus="on-hold"))
    assert world.sync.push(plan_id).status == "conflicted"
    (conflict,) = world.open_conflicts(plan_id)
    path = f"goals[id={goal_id}].lifecycle_status"
    assert (conflict["path"], conflict["ours"], conflict["theirs"]) == (path, "active", "on-hold")

    assert world.team("goal.status_changed", plan_id=plan_id, goal_id=goal_id, lifecycle_status="on-hold")[0] == 202
    world.ehr_delete(f"Goal/{goal['id']}")
    world.sync.pull_plans([plan_id])

    with UnitOfWork(world.db) as uow:
        closed = uow.sync.conflict(conflict["id"])
        assert (closed.status, closed.resolution) == ("resolved", "converged")
    assert world.open_conflicts(plan_id) == []
    recorded = world.plan_doc(plan_id)
    assert get_at(recorded, path) == "entered-in-error"
    assert get_at(recorded, f"goals[id={goal_id}].removed_in_ehr.how") == "deleted"
    server = world.server(plan_id)
    assert get_at(without_removed(recorded), path) is None and get_at(server.doc, path) is None
    assert world.sync.status(plan_id).status == "in_sync"

    world.sync.push(plan_id)
    world.worker.run_until_idle()
    assert world.find("Goal", "goal", f"{plan_id}/{goal_id}") is None, "the deleted goal was written again"
    assert world.sync.status(plan_id).last_error is None
    assert _differences(world, plan_id) == []


def test_a_member_joining_after_one_the_ehr_took_off_the_team_does_not_keep_every_pull_pushing(world):
    """Found by the model's soak run (rule 5, never settled): a member the EHR took off the CareTeam stays in the
    plan (`removed_in_ehr`), so the team list differs from the server's; a member who joins after one already off
    the team (the fixture's surgeon) goes to the end of the plan's list, but a pull maps the CareTeam's members
    back first. The merge kept the team's order (both sides "changed" the list), so every pull found the server's
    order not the plan's and queued a push, and every push rewrote the plan's resources: forever."""
    plan_id = _pushed_plan(world)
    joined = {"kind": "practitioner", "role": "nurse"}
    assert world.team("member.joined", plan_id=plan_id, member_id="member-a", name="Nurse A", **joined)[0] == 202
    world.sync.push(plan_id)
    careteam = next(k for k in world.server(plan_id).resources if k.startswith("CareTeam/"))
    world.ehr_edit(
        careteam,
        lambda t: t.update(
            participant=[p for p in t["participant"] if p.get("member", {}).get("display") != "Nurse A"]
        ),
    )
    world.sync.pull_plans([plan_id])
    assert world.plan(plan_id).member("member-a").removed_in_ehr is not None
    assert world.team("member.joined", plan_id=plan_id, member_id="member-b", name="Nurse B", **joined)[0] == 202
    world.sync.push(plan_id)
    world.worker.run_until_idle()

    world.sync.pull_plans([plan_id])  # takes the server's order of the members
    sent = world.requests_sent
    assert world.sync.push(plan_id).requests == 0
    world.worker.run_until_idle()
    assert world.requests_sent == sent, "a pull queued a push of a plan the server already holds"
    assert world.sync.pull_plans([plan_id]).outcomes[plan_id] == "unchanged"
    assert _differences(world, plan_id) == []
