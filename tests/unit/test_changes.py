"""The domain operations behind each team event, and their refusals (no database, no HTTP)."""

import json
from decimal import Decimal

import pytest
from marshmallow import ValidationError

from service.api.schemas import EVENT_DATA_SCHEMAS
from service.domain.changes import (
    AddNote,
    AddStep,
    ChangeGoalStatus,
    CompleteStep,
    CreatePlan,
    DeclineGoalSetting,
    JoinMember,
    LeaveMember,
    ProposeGoal,
    ProposerSpec,
    RecordAgreement,
    RecordCheckIn,
    ResumeGoalSetting,
    ReviewPlan,
    ReviseGoal,
    UpdatePlan,
    UpdateStep,
    add_duration,
    apply_command,
)
from service.domain.errors import Conflict, NotFound, RuleViolation
from service.domain.model import Goal, Patient, Plan, Step, Target
from service.domain.rules import check_plan, errors
from service.domain.types import Concept, Note, Quantity
from tests.support import FIXTURES

AT = "2026-11-22T09:00:00+00:00"
P = "plan-1"
STEPS = Concept(text="steps a day")


def goal(goal_id: str = "g1", **kw) -> Goal:
    return Goal(id=goal_id, description=Concept(text="Walk to the park"), **kw)


def run(plan: Plan | None, *commands) -> Plan:
    for command in commands:
        plan = apply_command(command, plan, AT)
    assert plan is not None
    return plan


def team_plan() -> Plan:
    """A plan with the patient, a GP and a nurse, and one proposed goal with a measured target."""
    return run(
        None,
        CreatePlan(P, Patient("MRN-1", "Sam"), author=ProposerSpec("practitioner", "gp", display="Dr Lee")),
        JoinMember(P, "nurse", "practitioner", role="nurse", name="Nurse Kim"),
        ProposeGoal(P, Patient("MRN-1"), goal(targets=[Target(measure=STEPS)]), ProposerSpec("patient")),
    )


def active_plan() -> Plan:
    return run(team_plan(), RecordAgreement(P, "g1", "patient", "agree"), ChangeGoalStatus(P, "g1", "active"))


def test_creating_a_plan_puts_the_patient_and_author_on_its_team():
    plan = team_plan()
    assert [(m.id, m.kind, m.in_team) for m in plan.team] == [
        ("patient", "patient", True),
        ("gp", "practitioner", True),
        ("nurse", "practitioner", True),
    ]
    assert (plan.status, plan.author, plan.version, plan.team[0].name) == ("active", "gp", 3, "Sam")
    with pytest.raises(Conflict, match="already exists"):
        apply_command(CreatePlan(P, Patient("MRN-1")), plan, AT)


@pytest.mark.parametrize(
    "command",
    [
        UpdatePlan(P, {"title": "x"}),
        ReviewPlan(P, "2027-01-01", "2027-04-01"),
        DeclineGoalSetting(P, "2027-01-01"),
        JoinMember(P, "m", "practitioner", name="M"),
        RecordAgreement(P, "g1", "patient", "agree"),
        RecordCheckIn(P, "g1", "c1", AT, integer=3),
        AddStep(P, Step("s1", "Walk")),
        AddNote(P, "hello", "patient"),
    ],
)
def test_events_for_an_unknown_plan_are_not_found(command):
    with pytest.raises(NotFound, match="plan plan-1 does not exist"):
        apply_command(command, None, AT)


def test_an_update_changes_only_the_fields_given_and_none_clears():
    plan = run(team_plan(), UpdatePlan(P, {"title": "Walking plan", "what_matters": "My daughter"}))
    plan = run(plan, UpdatePlan(P, {"what_matters": None, "status": "on-hold"}))
    assert (plan.title, plan.what_matters, plan.status, plan.author) == ("Walking plan", None, "on-hold", "gp")
    with pytest.raises(RuleViolation, match="end before it starts"):
        run(plan, UpdatePlan(P, {"period_start": "2027-02-01", "period_end": "2027-01-01"}))


def test_a_closed_plan_takes_no_more_changes_and_the_caller_plan_is_untouched():
    plan = run(team_plan(), UpdatePlan(P, {"status": "completed"}))
    with pytest.raises(RuleViolation, match="completed"):
        apply_command(UpdatePlan(P, {"status": "active"}), plan, AT)
    with pytest.raises(RuleViolation, match="completed"):
        apply_command(AddNote(P, "late note", "gp"), plan, AT)
    assert (plan.status, plan.notes, plan.version) == ("completed", [], 4)


def test_a_review_records_a_dated_note_and_the_next_review_from_the_cadence():
    plan = run(team_plan(), UpdatePlan(P, {"review_every": Quantity(Decimal(3), None, "mo", None, "mo")}))
    plan = run(plan, ReviewPlan(P, "2027-11-30", note="All on track", by="gp"))
    assert plan.next_review == "2028-02-29"  # three months on, clamped to the month's end
    assert plan.notes == [Note("All on track", author_member="gp", time="2027-11-30")]
    with pytest.raises(RuleViolation, match="after the review"):
        run(plan, ReviewPlan(P, "2027-12-01", "2027-12-01"))
    with pytest.raises(RuleViolation, match="no review_every"):
        run(team_plan(), ReviewPlan(P, "2027-12-01"))


@pytest.mark.parametrize(
    ("start", "value", "unit", "expected"),
    [
        ("2027-01-31", 1, "mo", "2027-02-28"),
        ("2027-01-01", 2, "wk", "2027-01-15"),
        ("2028-02-29", 1, "a", "2029-02-28"),
    ],
)
def test_add_duration(start, value, unit, expected):
    assert add_duration(start, Quantity(Decimal(value), code=unit)) == expected


def test_declining_goal_setting_puts_open_goals_on_hold_and_resuming_leaves_them_there():
    plan = run(active_plan(), ProposeGoal(P, Patient("MRN-1"), goal("g2"), ProposerSpec("patient")))
    plan = run(
        plan,
        ChangeGoalStatus(P, "g2", "cancelled"),
        ProposeGoal(P, Patient("MRN-1"), goal("g3"), ProposerSpec("patient")),
    )
    plan = run(plan, DeclineGoalSetting(P, "2027-01-05", "Moving house"))
    assert [(g.id, g.lifecycle_status) for g in plan.goals] == [
        ("g1", "on-hold"),
        ("g2", "cancelled"),
        ("g3", "on-hold"),
    ]
    assert (plan.goal_setting, plan.goal_setting_note, plan.goals[0].status_date) == (
        "declined",
        "Moving house",
        "2027-01-05",
    )
    with pytest.raises(Conflict):
        run(plan, DeclineGoalSetting(P, "2027-01-06"))
    with pytest.raises(RuleViolation, match="not to set goals"):
        run(plan, ProposeGoal(P, Patient("MRN-1"), goal("g4"), ProposerSpec("patient")))
    with pytest.raises(RuleViolation, match=r"goals\[0\].lifecycle_status"):
        run(plan, ChangeGoalStatus(P, "g1", "active"))  # rule 4 of check_plan, named by its path
    plan = run(plan, ResumeGoalSetting(P, "2027-02-01"))
    assert plan.goal_setting == "open" and plan.goals[0].lifecycle_status == "on-hold"
    with pytest.raises(Conflict):
        run(plan, ResumeGoalSetting(P, "2027-02-02"))
    assert run(plan, ChangeGoalStatus(P, "g1", "active")).goals[0].lifecycle_status == "active"


def test_members_join_once_leave_keeping_their_history_and_may_rejoin():
    plan = run(active_plan(), RecordAgreement(P, "g1", "nurse", "agree"), AddNote(P, "Good start", "nurse", "g1"))
    with pytest.raises(Conflict):
        run(plan, JoinMember(P, "nurse", "practitioner", name="Nurse Kim"))
    with pytest.raises(Conflict, match="patient"):
        run(plan, JoinMember(P, "patient-2", "patient"))
    plan = run(plan, LeaveMember(P, "nurse"))
    assert plan.member("nurse").in_team is False
    assert plan.goals[0].agreement("nurse") is not None and errors(check_plan(plan)) == []
    with pytest.raises(Conflict, match="already left"):
        run(plan, LeaveMember(P, "nurse"))
    with pytest.raises(RuleViolation, match="not on the team"):
        run(plan, AddNote(P, "Still here?", "nurse"))
    plan = run(plan, JoinMember(P, "nurse", "practitioner", role="nurse"))
    assert plan.member("nurse").in_team and plan.member("nurse").name == "Nurse Kim"


def test_a_member_who_owns_open_steps_cannot_leave_and_the_patient_never_leaves():
    plan = run(active_plan(), AddStep(P, Step("s1", "Book physio", goal_ids=["g1"], owner="nurse")))
    with pytest.raises(RuleViolation, match="owns open steps s1"):
        run(plan, LeaveMember(P, "nurse"))
    plan = run(plan, CompleteStep(P, "s1"), LeaveMember(P, "nurse"))
    assert plan.member("nurse").in_team is False
    with pytest.raises(RuleViolation, match="patient stays"):
        run(plan, LeaveMember(P, "patient"))
    with pytest.raises(NotFound):
        run(plan, LeaveMember(P, "nobody"))


def test_an_agreement_is_recorded_once_per_member_with_their_own_priority():
    high = Concept(text="high")
    plan = run(
        team_plan(), RecordAgreement(P, "g1", "nurse", "pending"), RecordAgreement(P, "g1", "nurse", "agree", high)
    )
    assert [(a.member_id, a.status, a.priority) for a in plan.goals[0].agreements] == [("nurse", "agree", high)]


@pytest.mark.parametrize(
    ("command", "error", "match"),
    [
        (RecordAgreement(P, "g1", "stranger", "agree"), RuleViolation, "not on the team"),
        (RecordAgreement(P, "nope", "patient", "agree"), NotFound, "goal nope"),
    ],
)
def test_an_agreement_from_outside_the_team_or_on_an_unknown_goal_is_refused(command, error, match):
    plan = team_plan()
    with pytest.raises(error, match=match):
        apply_command(command, plan, AT)
    assert plan.goals[0].agreements == [] and plan.version == 3


def test_the_patient_disagreeing_puts_a_goal_in_force_on_hold():
    plan = run(active_plan(), RecordAgreement(P, "g1", "patient", "disagree"))
    assert (plan.goals[0].lifecycle_status, plan.goals[0].status_reason) == (
        "on-hold",
        "the patient disagrees with this goal",
    )
    with pytest.raises(RuleViolation, match="patient disagrees"):
        run(plan, ChangeGoalStatus(P, "g1", "active"))


def test_goal_status_changes_follow_the_lifecycle():
    plan = active_plan()
    with pytest.raises(Conflict, match="already active"):
        run(plan, ChangeGoalStatus(P, "g1", "active"))
    with pytest.raises(RuleViolation, match="back to proposed"):
        run(plan, ChangeGoalStatus(P, "g1", "proposed"))
    with pytest.raises(RuleViolation, match="only a proposal"):
        run(plan, ChangeGoalStatus(P, "g1", "rejected"))
    achieved = Concept(text="achieved")
    plan = run(plan, ChangeGoalStatus(P, "g1", "completed", achieved, "Walked every week", "2027-03-01"))
    g1 = plan.goals[0]
    assert (g1.lifecycle_status, g1.achievement, g1.status_reason, g1.status_date) == (
        "completed",
        achieved,
        "Walked every week",
        "2027-03-01",
    )
    with pytest.raises(RuleViolation, match="completed"):
        run(plan, ChangeGoalStatus(P, "g1", "active"))
    assert run(plan, ChangeGoalStatus(P, "g1", "entered-in-error")).goals[0].lifecycle_status == "entered-in-error"


def test_a_revision_cancels_the_old_goal_and_moves_open_steps_to_the_new_one():
    plan = run(
        active_plan(),
        AddStep(P, Step("s-open", "Walk", goal_ids=["g1"], owner="patient")),
        AddStep(P, Step("s-done", "Buy shoes", goal_ids=["g1"], owner="patient")),
        CompleteStep(P, "s-done"),
    )
    plan = run(plan, ReviseGoal(P, "g1", goal("g1b"), ProposerSpec("practitioner", "gp"), "Too far for now"))
    old, new = plan.goals
    assert (old.lifecycle_status, old.status_reason) == ("cancelled", "Too far for now")
    assert (new.id, new.lifecycle_status, new.replaces, new.proposed_by) == ("g1b", "proposed", "g1", "gp")
    assert [s.goal_ids for s in plan.steps] == [["g1b"], ["g1"]]
    with pytest.raises(RuleViolation, match="cancelled"):
        run(plan, ReviseGoal(P, "g1", goal("g1c"), ProposerSpec("patient")))
    with pytest.raises(Conflict, match="g1b already exists"):
        run(plan, ReviseGoal(P, "g1b", goal("g1b"), ProposerSpec("patient")))


def test_a_check_in_takes_the_goal_target_measure_by_default():
    plan = run(team_plan(), RecordCheckIn(P, "g1", "c1", AT, quantity=Quantity(Decimal(3200)), recorded_by="patient"))
    (check_in,) = plan.goals[0].check_ins
    assert (check_in.id, check_in.measure, check_in.quantity.value) == ("c1", STEPS, Decimal(3200))
    with pytest.raises(Conflict):
        run(plan, RecordCheckIn(P, "g1", "c1", AT, integer=1))
    with pytest.raises(RuleViolation, match="not on the team"):
        run(plan, RecordCheckIn(P, "g1", "c2", AT, integer=1, recorded_by="stranger"))
    bare = run(plan, ProposeGoal(P, Patient("MRN-1"), goal("g2"), ProposerSpec("patient")))
    with pytest.raises(RuleViolation, match="no target measure"):
        run(bare, RecordCheckIn(P, "g2", "c1", AT, integer=1))


@pytest.mark.parametrize("status", ["cancelled", "completed", "entered-in-error", "rejected"])
def test_a_check_in_on_a_closed_goal_is_refused(status):
    plan = run(team_plan(), RecordAgreement(P, "g1", "patient", "agree"), ChangeGoalStatus(P, "g1", status))
    with pytest.raises(RuleViolation, match=status):
        run(plan, RecordCheckIn(P, "g1", "c1", AT, integer=4))
    assert plan.goals[0].check_ins == []


def test_steps_are_added_updated_and_done():
    plan = run(active_plan(), AddStep(P, Step("s1", "Walk", goal_ids=["g1"], owner="patient", schedule="Saturdays")))
    with pytest.raises(Conflict):
        run(plan, AddStep(P, Step("s1", "Again")))
    progress = Note("Went twice", author_member="patient")
    plan = run(plan, UpdateStep(P, "s1", {"status": "in-progress", "owner": "nurse"}, progress))
    (step,) = plan.steps
    assert (step.status, step.owner, step.title, step.progress[0].time) == ("in-progress", "nurse", "Walk", AT)
    with pytest.raises(RuleViolation, match=r"steps\[0\].schedule"):
        run(plan, UpdateStep(P, "s1", {"due_date": "2027-01-01"}))  # schedule and dates: check_plan names the path
    plan = run(plan, CompleteStep(P, "s1", "2027-01-02", "Habit now", "patient"))
    assert plan.steps[0].status == "completed" and plan.steps[0].progress[-1].text == "Habit now"
    with pytest.raises(Conflict, match="already completed"):
        run(plan, CompleteStep(P, "s1"))
    with pytest.raises(RuleViolation, match="completed"):
        run(plan, UpdateStep(P, "s1", {"title": "Walk more"}))
    with pytest.raises(NotFound):
        run(plan, CompleteStep(P, "s9"))


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (Step("s1", "x", goal_ids=["nope"]), NotFound),
        (Step("s1", "x", owner="stranger"), RuleViolation),
    ],
)
def test_a_step_for_an_unknown_goal_or_owner_is_refused(step, error):
    with pytest.raises(error):
        run(team_plan(), AddStep(P, step))


def test_a_step_toward_a_closed_goal_is_refused():
    plan = run(team_plan(), ChangeGoalStatus(P, "g1", "rejected"))
    with pytest.raises(RuleViolation, match="rejected"):
        run(plan, AddStep(P, Step("s1", "x", goal_ids=["g1"])))


def test_notes_go_to_the_plan_or_a_goal_from_team_members():
    plan = run(
        team_plan(), AddNote(P, "Plan note", "gp"), AddNote(P, "Goal note", "patient", "g1", "2026-11-23T10:00:00Z")
    )
    assert [(n.text, n.author_member, n.time) for n in plan.notes] == [("Plan note", "gp", AT)]
    assert plan.goals[0].notes[0].time == "2026-11-23T10:00:00Z"
    with pytest.raises(NotFound):
        run(plan, AddNote(P, "x", "gp", "nope"))


def test_a_rule_the_plan_already_broke_does_not_block_other_events():
    plan = team_plan()
    plan.goals[0].proposed_by = "ghost"  # e.g. read from an EHR that way
    assert errors(check_plan(plan))
    assert run(plan, AddNote(P, "Still fine", "gp")).version == 4


# -- the schemas turn each documented example into its command --------------------------------------


@pytest.mark.parametrize("event_type", sorted(EVENT_DATA_SCHEMAS))
def test_every_event_type_has_a_loading_example(event_type):
    path = FIXTURES / "events" / f"{event_type.replace('.', '-').replace('_', '-')}.json"
    event = json.loads(path.read_text())
    assert event["type"] == event_type
    command = EVENT_DATA_SCHEMAS[event_type]().load(event["data"])
    assert command.plan_id == event["data"]["plan_id"]


@pytest.mark.parametrize(
    ("event_type", "data", "field"),
    [
        ("checkin.recorded", {"goal_id": "g", "checkin_id": "c", "at": AT, "value": 1, "integer": 2}, "value"),
        ("checkin.recorded", {"goal_id": "g", "checkin_id": "c", "at": AT, "integer": 2, "unit": "kg"}, "unit"),
        ("plan.updated", {}, "_schema"),
        ("goal.status_changed", {"goal_id": "g"}, "_schema"),
        ("step.added", {"step_id": "s", "title": "t", "schedule": "Sat", "due_date": "2027-01-01"}, "schedule"),
        ("member.joined", {"member_id": "m", "kind": "practitioner"}, "identifier"),
        ("agreement.recorded", {"goal_id": "g", "member_id": "m", "status": "maybe"}, "status"),
    ],
)
def test_malformed_event_data_names_the_field(event_type, data, field):
    with pytest.raises(ValidationError) as raised:
        EVENT_DATA_SCHEMAS[event_type]().load({"plan_id": P, **data})
    assert field in raised.value.normalized_messages()


def test_goal_proposed_keeps_its_published_payload_and_a_goal_due_date_fills_the_targets():
    event = json.loads((FIXTURES / "events" / "goal-proposed.json").read_text())
    command = EVENT_DATA_SCHEMAS["goal.proposed"]().load(event["data"])
    assert command.goal.targets[0].due_date == "2027-01-31" and command.proposer.kind == "patient"
    event["data"]["goal"]["due_date"] = "2027-06-30"
    del event["data"]["goal"]["targets"]
    assert EVENT_DATA_SCHEMAS["goal.proposed"]().load(event["data"]).goal.targets == [Target(due_date="2027-06-30")]


def test_a_cadence_past_the_calendar_is_a_rule_violation_not_a_crash():
    with pytest.raises(RuleViolation, match="9999"):
        add_duration("9999-12-01", Quantity(Decimal(3), code="mo"))
    with pytest.raises(RuleViolation, match="9999"):
        add_duration("9999-12-31", Quantity(Decimal(2), code="wk"))
