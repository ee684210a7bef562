"""Changes to a plan as team events make them; each refuses what the plan's state does not allow.

Every team event becomes one command: a frozen dataclass naming its `plan_id`, whose
`apply(plan, at)` checks the plan's state, changes it and bumps its version, or raises
`NotFound` (an unknown plan, goal, step or member: 404), `Conflict` (a duplicate, or a state
already recorded: 409) or `RuleViolation` (a change the plan's state does not allow: 422).
`apply_command` runs one on a copy of the plan and also refuses a change that would make the
plan break a rule of `check_plan` it did not break before. docs/events.md is the catalogue.
"""

from __future__ import annotations

import calendar
import copy
import datetime
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from service.domain.errors import Conflict, NotFound, RuleViolation
from service.domain.model import CLOSED_GOAL_STATUSES, Agreement, CheckIn, Goal, Member, Patient, Plan, Step
from service.domain.rules import check_plan, errors
from service.domain.terminology import ROLES
from service.domain.types import Coding, Concept, Identifier, Note, Quantity

CLOSED_PLAN = ("completed", "revoked", "entered-in-error")
CLOSED_STEP = ("completed", "cancelled", "stopped", "entered-in-error")
PAUSED_BY_DECLINE = ("proposed", "planned", "accepted", "active")
DECLINED_REASON = "the patient has chosen not to set goals for now"
DISAGREED_REASON = "the patient disagrees with this goal"
PLAN_FIELDS = (
    "title",
    "status",
    "intent",
    "what_matters",
    "period_start",
    "period_end",
    "categories",
    "review_every",
    "next_review",
)
STEP_FIELDS = ("title", "description", "status", "goal_ids", "owner", "start_date", "due_date", "schedule")


class Command(Protocol):
    """A team event as a change to one plan."""

    plan_id: str

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Change the plan (None when it does not exist yet) at instant `at` and return it."""
        ...


def apply_command(command: Command, plan: Plan | None, at: str) -> Plan:
    """Apply the command to a copy of the plan; refuse it if the result breaks a rule the plan kept."""
    changed = command.apply(copy.deepcopy(plan), at)
    broken = errors(check_plan(changed))
    if broken and plan is not None:  # the plan before the change is only checked when the result is not clean
        before = {(i.path, i.message) for i in errors(check_plan(plan))}
        broken = [i for i in broken if (i.path, i.message) not in before]
    if broken:
        raise RuleViolation(
            f"the change would break a rule of plan {changed.id} at {broken[0].path}: {broken[0].message}",
            plan_id=changed.id,
            errors={i.path: i.message for i in broken},
        )
    return changed


# -- lookups that refuse ---------------------------------------------------------------------------


def _open_plan(plan: Plan | None, plan_id: str) -> Plan:
    if plan is None:
        raise NotFound(f"plan {plan_id} does not exist", plan_id=plan_id)
    if plan.status in CLOSED_PLAN:
        raise RuleViolation(f"plan {plan.id} is {plan.status}: it takes no more changes", plan_id=plan.id)
    return plan


def _goal(plan: Plan, goal_id: str, open_only: bool = True) -> Goal:
    goal = plan.goal(goal_id)
    if goal is None:
        raise NotFound(f"goal {goal_id} does not exist in plan {plan.id}", goal_id=goal_id)
    if open_only and goal.lifecycle_status in CLOSED_GOAL_STATUSES:
        raise RuleViolation(f"goal {goal_id} is {goal.lifecycle_status}: it takes no more changes", goal_id=goal_id)
    return goal


def _on_team(plan: Plan, member_id: str, role: str) -> Member:
    member = plan.member(member_id)
    if member is None or not member.in_team:
        raise RuleViolation(f"{role} {member_id} is not on the team of plan {plan.id}", member_id=member_id)
    return member


def _step(plan: Plan, step_id: str) -> Step:
    step = plan.step(step_id)
    if step is None:
        raise NotFound(f"step {step_id} does not exist in plan {plan.id}", step_id=step_id)
    return step


def _day(at: str) -> str:
    return at[:10]


# -- the plan's members ------------------------------------------------------------------------------


def find_or_join(
    plan: Plan,
    kind: str,
    identifier: Identifier | None = None,
    name: str | None = None,
    member_id: str | None = None,
    role: Coding | None = None,
) -> Member:
    """Return the team member meant (by id, identifier, or as the patient), adding them if new."""
    if member_id is not None and plan.member(member_id) is not None:
        member = plan.member(member_id)
        assert member is not None
        if member.kind != kind:
            raise Conflict(f"team member {member_id} is a {member.kind}, not a {kind}", member_id=member_id)
        return member
    for member in plan.team:
        if kind == "patient" and member.kind == "patient":
            return member
        if identifier is not None and member.identifier == identifier:
            return member
    if kind == "patient":
        member_id = member_id or "patient"
    elif member_id is None:
        n = sum(1 for m in plan.team if m.kind == kind) + 1
        member_id = f"{kind}-{n}"
        while plan.member(member_id) is not None:
            n += 1
            member_id = f"{kind}-{n}"
    member = Member(id=member_id, kind=kind, identifier=identifier, name=name,
                    role=Concept(codings=[role]) if role else None)  # fmt: skip
    plan.team.append(member)
    return member


@dataclass(frozen=True)
class ProposerSpec:
    """Who acts: a team member by id, or a person by kind and identifier (joining the team if new)."""

    kind: str
    member_id: str | None = None
    identifier: Identifier | None = None
    display: str | None = None
    role: str | None = None


def join(plan: Plan, who: ProposerSpec) -> Member:
    """Return the member a spec names, adding them to the team if new; someone who left is refused."""
    role = ROLES.get(who.role or ("patient" if who.kind == "patient" else ""))
    member = find_or_join(plan, who.kind, who.identifier, who.display, who.member_id, role)
    if not member.in_team:
        raise RuleViolation(f"member {member.id} has left the team of plan {plan.id}", member_id=member.id)
    return member


@dataclass(frozen=True)
class JoinMember:
    """member.joined: someone joins the team (or rejoins it after leaving)."""

    plan_id: str
    member_id: str
    kind: str
    role: str | None = None
    name: str | None = None
    identifier: Identifier | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Add the member to the team, or bring back one who left."""
        plan = _open_plan(plan, self.plan_id)
        existing = plan.member(self.member_id)
        if existing is not None and (existing.in_team or existing.kind != self.kind):
            raise Conflict(f"member {self.member_id} is already named in plan {plan.id}", member_id=self.member_id)
        same_identifier = [m for m in plan.team if self.identifier and m.identifier == self.identifier]
        if any(m.id != self.member_id for m in same_identifier):
            raise Conflict(f"another member of plan {plan.id} has this identifier", member_id=same_identifier[0].id)
        patient = plan.patient_member()
        if self.kind == "patient" and patient is not None and patient.id != self.member_id:
            raise Conflict(f"the patient is already member {patient.id} of plan {plan.id}", member_id=patient.id)
        role = Concept(codings=[ROLES[self.role]]) if self.role else None
        if existing is None:
            plan.team.append(Member(self.member_id, self.kind, role, self.name, self.identifier))
        else:
            existing.in_team = True
            existing.role = role or existing.role
            existing.name = self.name or existing.name
            existing.identifier = self.identifier or existing.identifier
        plan.touch(at)
        return plan


@dataclass(frozen=True)
class LeaveMember:
    """member.left: someone leaves the team; goals and notes keep naming them."""

    plan_id: str
    member_id: str

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Take the member off the CareTeam, keeping them in the plan's history."""
        plan = _open_plan(plan, self.plan_id)
        member = plan.member(self.member_id)
        if member is None:
            raise NotFound(f"member {self.member_id} does not exist in plan {plan.id}", member_id=self.member_id)
        if not member.in_team:
            raise Conflict(f"member {member.id} has already left the team of plan {plan.id}", member_id=member.id)
        if member.kind == "patient":
            raise RuleViolation("the patient stays on the team of their own plan", member_id=member.id)
        owned = [s.id for s in plan.steps if s.owner == member.id and s.status not in CLOSED_STEP]
        if owned:
            raise RuleViolation(
                f"member {member.id} owns open steps {', '.join(owned)}: give them another owner first",
                member_id=member.id,
                step_ids=owned,
            )
        member.in_team = False
        plan.touch(at)
        return plan


# -- the plan itself ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePlan:
    """plan.created: the team opens a plan for a patient; the patient joins its team."""

    plan_id: str
    patient: Patient
    status: str = "active"
    title: str | None = None
    what_matters: str | None = None
    period_start: str | None = None
    period_end: str | None = None
    review_every: Quantity | None = None
    next_review: str | None = None
    categories: list[Concept] = field(default_factory=list)
    author: ProposerSpec | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Return the new plan; a plan id is used once."""
        if plan is not None:
            raise Conflict(f"plan {self.plan_id} already exists; change it with plan.updated", plan_id=self.plan_id)
        plan = Plan(
            id=self.plan_id,
            patient=self.patient,
            status=self.status,
            title=self.title,
            what_matters=self.what_matters,
            period_start=self.period_start,
            period_end=self.period_end,
            review_every=self.review_every,
            next_review=self.next_review,
            categories=list(self.categories),
        )
        find_or_join(plan, "patient", name=self.patient.display_name, role=ROLES["patient"])
        if self.author is not None:
            plan.author = join(plan, self.author).id
        plan.touch(at)
        return plan


@dataclass(frozen=True)
class UpdatePlan:
    """plan.updated: the fields given replace the plan's (None clears an optional one)."""

    plan_id: str
    changes: dict[str, Any]

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Set the fields given; a closed plan takes no changes."""
        plan = _open_plan(plan, self.plan_id)
        unknown = set(self.changes) - set(PLAN_FIELDS)
        if unknown:
            raise RuleViolation(f"plan fields {', '.join(sorted(unknown))} cannot be updated", plan_id=plan.id)
        for name, value in self.changes.items():
            setattr(plan, name, list(value) if name == "categories" else value)
        if plan.period_start and plan.period_end and plan.period_end < plan.period_start:
            raise RuleViolation(f"plan {plan.id} would end before it starts", plan_id=plan.id)
        plan.touch(at)
        return plan


def add_duration(day: str, every: Quantity) -> str:
    """Return the date `every` (d, wk, mo or a) after `day`, clamping to the month's last day."""
    start = datetime.date.fromisoformat(day[:10])
    if every.value is None or every.value != int(every.value) or every.value < 1:
        raise RuleViolation("review_every needs a whole number of days, weeks, months or years")
    n = int(every.value)
    if every.code in ("d", "wk"):
        try:
            return (start + datetime.timedelta(days=n * (7 if every.code == "wk" else 1))).isoformat()
        except OverflowError:
            raise RuleViolation("the next review would fall after the year 9999") from None
    if every.code not in ("mo", "a"):
        raise RuleViolation(f"review_every unit {every.code!r} is not d, wk, mo or a")
    months = start.month - 1 + n * (12 if every.code == "a" else 1)
    year, month = start.year + months // 12, months % 12 + 1
    if year > datetime.MAXYEAR:
        raise RuleViolation("the next review would fall after the year 9999")
    return datetime.date(year, month, min(start.day, calendar.monthrange(year, month)[1])).isoformat()


@dataclass(frozen=True)
class ReviewPlan:
    """plan.reviewed: the team and patient reviewed the plan; the next review is set."""

    plan_id: str
    reviewed_on: str
    next_review: str | None = None
    note: str | None = None
    by: str | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Record the review as a dated plan note and move the next review date."""
        plan = _open_plan(plan, self.plan_id)
        if self.by is not None:
            _on_team(plan, self.by, "reviewer")
        following = self.next_review
        if following is None:
            if plan.review_every is None:
                raise RuleViolation(f"plan {plan.id} has no review_every: give next_review", plan_id=plan.id)
            following = add_duration(self.reviewed_on, plan.review_every)
        if following <= self.reviewed_on:
            raise RuleViolation("next_review must come after the review", plan_id=plan.id)
        plan.next_review = following
        plan.notes.append(Note(self.note or "Plan reviewed.", author_member=self.by, time=self.reviewed_on))
        plan.touch(at)
        return plan


@dataclass(frozen=True)
class DeclineGoalSetting:
    """goal_setting.declined: the patient chooses not to set goals for now; open goals go on hold."""

    plan_id: str
    date: str
    note: str | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Record the choice and put every proposed, planned, accepted or active goal on hold."""
        plan = _open_plan(plan, self.plan_id)
        if plan.goal_setting == "declined":
            raise Conflict(f"goal setting is already declined in plan {plan.id}", plan_id=plan.id)
        for goal in plan.goals:
            if goal.lifecycle_status in PAUSED_BY_DECLINE:
                goal.lifecycle_status, goal.status_date = "on-hold", _day(self.date)
                goal.status_reason = DECLINED_REASON
        plan.goal_setting, plan.goal_setting_date, plan.goal_setting_note = "declined", self.date, self.note
        plan.touch(at)
        return plan


@dataclass(frozen=True)
class ResumeGoalSetting:
    """goal_setting.resumed: the patient is ready to set goals again; goals on hold stay on hold."""

    plan_id: str
    date: str
    note: str | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Open goal setting again."""
        plan = _open_plan(plan, self.plan_id)
        if plan.goal_setting == "open":
            raise Conflict(f"goal setting is already open in plan {plan.id}", plan_id=plan.id)
        plan.goal_setting, plan.goal_setting_date, plan.goal_setting_note = "open", self.date, self.note
        plan.touch(at)
        return plan


@dataclass(frozen=True)
class AddNote:
    """note.added: a team member adds a note to the plan, or to one of its goals."""

    plan_id: str
    text: str
    author: str
    goal_id: str | None = None
    time: str | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Append the note; its author must be on the team."""
        plan = _open_plan(plan, self.plan_id)
        notes = _goal(plan, self.goal_id, open_only=False).notes if self.goal_id else plan.notes
        _on_team(plan, self.author, "author")
        notes.append(Note(self.text, author_member=self.author, time=self.time or at))
        plan.touch(at)
        return plan


# -- goals ------------------------------------------------------------------------------------------


def propose_goal(plan: Plan, goal: Goal, at: str) -> None:
    """Add a newly proposed goal; a goal id is used once per plan."""
    if plan.status in CLOSED_PLAN:
        raise RuleViolation(f"plan {plan.id} is {plan.status}: no new goals can be proposed", plan_id=plan.id)
    if plan.goal_setting == "declined":
        raise RuleViolation(f"the patient has chosen not to set goals for now in plan {plan.id}", plan_id=plan.id)
    if plan.goal(goal.id) is not None:
        raise Conflict(f"goal {goal.id} already exists in plan {plan.id}", goal_id=goal.id)
    if goal.lifecycle_status != "proposed":
        raise RuleViolation("a goal enters a plan as proposed", goal_id=goal.id)
    plan.goals.append(goal)
    plan.touch(at)


@dataclass(frozen=True)
class ProposeGoal:
    """goal.proposed: someone on the team (or the patient) puts a goal forward; opens the plan if new."""

    plan_id: str
    patient: Patient
    goal: Goal
    proposer: ProposerSpec

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Add the goal as proposed, its proposer joining the team if new."""
        if plan is None:
            plan = Plan(id=self.plan_id, patient=self.patient)
        elif plan.patient.mrn != self.patient.mrn:
            raise Conflict(f"plan {plan.id} belongs to another patient", plan_id=plan.id)
        member = join(plan, self.proposer)
        propose_goal(plan, replace(self.goal, proposed_by=member.id), at)
        return plan


@dataclass(frozen=True)
class ReviseGoal:
    """goal.revised: a new goal replaces an open one, which is cancelled with the reason given."""

    plan_id: str
    replaces: str
    goal: Goal
    reviser: ProposerSpec
    reason: str | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Cancel the old goal, propose the new one (replacing it) and move open steps over to it."""
        plan = _open_plan(plan, self.plan_id)
        old = _goal(plan, self.replaces)
        member = join(plan, self.reviser)
        propose_goal(plan, replace(self.goal, proposed_by=member.id, replaces=old.id), at)
        old.lifecycle_status, old.status_date, old.status_reason = "cancelled", _day(at), self.reason or "revised"
        for step in plan.steps:
            if step.status not in CLOSED_STEP and old.id in step.goal_ids:
                step.goal_ids = [self.goal.id if g == old.id else g for g in step.goal_ids]
        return plan


@dataclass(frozen=True)
class RecordAgreement:
    """agreement.recorded: a team member agrees, disagrees or has not decided, with their own priority."""

    plan_id: str
    goal_id: str
    member_id: str
    status: str
    priority: Concept | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Record (or replace) the member's agreement; the patient disagreeing puts a goal in force on hold."""
        plan = _open_plan(plan, self.plan_id)
        goal = _goal(plan, self.goal_id)
        member = _on_team(plan, self.member_id, "member")
        agreement = Agreement(member.id, self.status, self.priority)
        known = goal.agreement(member.id)
        if known is None:
            goal.agreements.append(agreement)
        else:
            goal.agreements[goal.agreements.index(known)] = agreement
        if member.kind == "patient" and self.status == "disagree" and goal.lifecycle_status in ("accepted", "active"):
            goal.lifecycle_status, goal.status_date, goal.status_reason = "on-hold", _day(at), DISAGREED_REASON
        plan.touch(at)
        return plan


@dataclass(frozen=True)
class ChangeGoalStatus:
    """goal.status_changed: a goal's lifecycle and/or achievement status changes."""

    plan_id: str
    goal_id: str
    lifecycle_status: str | None = None
    achievement: Concept | None = None
    reason: str | None = None
    date: str | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Move the goal; a closed goal can only be marked entered-in-error."""
        plan = _open_plan(plan, self.plan_id)
        goal = _goal(plan, self.goal_id, open_only=self.lifecycle_status != "entered-in-error")
        new = self.lifecycle_status
        if new == goal.lifecycle_status and self.achievement is None:
            raise Conflict(f"goal {goal.id} is already {new}", goal_id=goal.id)
        if new == "proposed" and goal.lifecycle_status != "proposed":
            raise RuleViolation(f"goal {goal.id} cannot go back to proposed", goal_id=goal.id)
        if new == "rejected" and goal.lifecycle_status not in ("proposed", "planned"):
            raise RuleViolation(
                f"goal {goal.id} is {goal.lifecycle_status}: only a proposal is rejected", goal_id=goal.id
            )
        if new is not None:
            goal.lifecycle_status = new
        if self.achievement is not None:
            goal.achievement = self.achievement
        goal.status_date = self.date or _day(at)
        goal.status_reason = self.reason if self.reason is not None else goal.status_reason
        plan.touch(at)
        return plan


@dataclass(frozen=True)
class RecordCheckIn:
    """checkin.recorded: progress on an open goal, measured or rated; the measure defaults to the target's."""

    plan_id: str
    goal_id: str
    check_in_id: str
    at: str
    measure: Concept | None = None
    quantity: Quantity | None = None
    rating: Concept | None = None
    integer: int | None = None
    text: str | None = None
    note: str | None = None
    recorded_by: str | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Add the check-in to the goal."""
        plan = _open_plan(plan, self.plan_id)
        goal = _goal(plan, self.goal_id)
        if any(c.id == self.check_in_id for c in goal.check_ins):
            raise Conflict(f"check-in {self.check_in_id} already exists on goal {goal.id}", goal_id=goal.id)
        if self.recorded_by is not None:
            _on_team(plan, self.recorded_by, "recorded_by")
        measure = self.measure or next((t.measure for t in goal.targets if t.measure is not None), None)
        if measure is None:
            raise RuleViolation(f"goal {goal.id} has no target measure: name the check-in's measure", goal_id=goal.id)
        goal.check_ins.append(
            CheckIn(
                self.check_in_id,
                self.at,
                measure,
                self.quantity,
                self.rating,
                self.integer,
                self.text,
                self.note,
                self.recorded_by,
            )
        )
        plan.touch(at)
        return plan


# -- steps ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddStep:
    """step.added: a small action toward open goals, owned by a team member."""

    plan_id: str
    step: Step

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Add the step; a step id is used once per plan."""
        plan = _open_plan(plan, self.plan_id)
        if plan.step(self.step.id) is not None:
            raise Conflict(f"step {self.step.id} already exists in plan {plan.id}", step_id=self.step.id)
        for goal_id in self.step.goal_ids:
            _goal(plan, goal_id)
        if self.step.owner is not None:
            _on_team(plan, self.step.owner, "owner")
        plan.steps.append(copy.deepcopy(self.step))
        plan.touch(at)
        return plan


@dataclass(frozen=True)
class UpdateStep:
    """step.updated: the fields given replace the step's (None clears); a progress note is appended."""

    plan_id: str
    step_id: str
    changes: dict[str, Any] = field(default_factory=dict)
    progress: Note | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Change an open step; new goals and owner are checked like a new step's."""
        plan = _open_plan(plan, self.plan_id)
        step = _step(plan, self.step_id)
        if step.status in CLOSED_STEP:
            raise RuleViolation(f"step {step.id} is {step.status}: it takes no more changes", step_id=step.id)
        unknown = set(self.changes) - set(STEP_FIELDS)
        if unknown:
            raise RuleViolation(f"step fields {', '.join(sorted(unknown))} cannot be updated", step_id=step.id)
        for goal_id in self.changes.get("goal_ids", []):
            _goal(plan, goal_id)
        for member_id in (self.changes.get("owner"), self.progress.author_member if self.progress else None):
            if member_id is not None:
                _on_team(plan, member_id, "member")
        for name, value in self.changes.items():
            setattr(step, name, list(value) if name == "goal_ids" else value)
        if self.progress is not None:
            step.progress.append(replace(self.progress, time=self.progress.time or at))
        plan.touch(at)
        return plan


@dataclass(frozen=True)
class CompleteStep:
    """step.done: a step is completed, with an optional progress note."""

    plan_id: str
    step_id: str
    date: str | None = None
    note: str | None = None
    by: str | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Mark the step completed."""
        plan = _open_plan(plan, self.plan_id)
        step = _step(plan, self.step_id)
        if step.status == "completed":
            raise Conflict(f"step {step.id} is already completed", step_id=step.id)
        if step.status in CLOSED_STEP:
            raise RuleViolation(f"step {step.id} is {step.status}: it cannot be completed", step_id=step.id)
        if self.by is not None:
            _on_team(plan, self.by, "by")
        step.status = "completed"
        if self.note:
            step.progress.append(Note(self.note, author_member=self.by, time=self.date or at))
        plan.touch(at)
        return plan
