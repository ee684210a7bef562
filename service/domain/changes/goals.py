"""Changes to goals: goal.proposed/revised/status_changed, agreement.recorded, checkin.recorded and
outcome.recorded."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from service.domain.changes.base import (
    CLOSED_PLAN,
    CLOSED_STEP,
    DISAGREED_REASON,
    _day,
    _goal,
    _on_team,
    _open_plan,
)
from service.domain.changes.team import ProposerSpec, find_or_join, join
from service.domain.errors import Conflict, RuleViolation
from service.domain.model import Agreement, CheckIn, Goal, OutcomeRating, Patient, Plan
from service.domain.rules import check_rating
from service.domain.terminology import ROLES
from service.domain.types import Concept, Quantity


def same_but_case(new_id: str, ids: Iterable[str]) -> str | None:
    """Return the id among `ids` that equals `new_id` but for case, or None.

    Ids are case-sensitive, but a FHIR server may match identifier values without case (Medplum, and the
    local server, do): two goals, or a goal's check-ins and ratings, whose ids differ only in case have
    identifiers it cannot tell apart, and the push of such a plan is refused for ever (the conditional
    update of one resolves to the other).
    """
    folded = new_id.lower()
    return next((i for i in ids if i != new_id and i.lower() == folded), None)


def refuse_case_twin(kind: str, new_id: str, ids: Iterable[str], twin_in: str, goal_id: str) -> None:
    """Raise Conflict (409) when `new_id` equals one of `ids` but for case (see same_but_case); `twin_in`
    names where the other id is, with `{twin}` standing for it."""
    twin = same_but_case(new_id, ids)
    if twin is not None:
        raise Conflict(
            f"{kind} {new_id} differs from {twin_in.format(twin=twin)} only in case, which FHIR identifier "
            "searches do not tell apart",
            goal_id=goal_id,
        )


def propose_goal(plan: Plan, goal: Goal, at: str) -> None:
    """Add a newly proposed goal; a goal id is used once per plan."""
    if plan.status in CLOSED_PLAN:
        raise RuleViolation(f"plan {plan.id} is {plan.status}: no new goals can be proposed", plan_id=plan.id)
    if plan.goal_setting == "declined":
        raise RuleViolation(f"the patient has chosen not to set goals for now in plan {plan.id}", plan_id=plan.id)
    if plan.goal(goal.id) is not None:
        raise Conflict(f"goal {goal.id} already exists in plan {plan.id}", goal_id=goal.id)
    refuse_case_twin("goal", goal.id, (g.id for g in plan.goals), "goal {twin} of plan " + plan.id, goal.id)
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
        if plan is None:  # opened here: the patient joins its team, as plan.created has them join
            plan = Plan(id=self.plan_id, patient=self.patient)
            find_or_join(plan, "patient", name=self.patient.display_name, role=ROLES["patient"])
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
        taken = [c.id for c in goal.check_ins] + [r.id for r in goal.ratings]  # all Observations of the goal
        if self.check_in_id in taken:
            what = "check-in" if any(c.id == self.check_in_id for c in goal.check_ins) else "rating"
            raise Conflict(f"{what} {self.check_in_id} already exists on goal {goal.id}", goal_id=goal.id)
        refuse_case_twin("check-in", self.check_in_id, taken, "{twin} on goal " + goal.id, goal.id)
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


@dataclass(frozen=True)
class RecordOutcome:
    """outcome.recorded: a team member rates how far a goal has come (GBO 0-10 or GAS -2..+2)."""

    plan_id: str
    goal_id: str
    scale: str
    score: int
    occasion: str
    rated_by: str
    at: str
    note: str | None = None
    rating_id: str | None = None

    def apply(self, plan: Plan | None, at: str) -> Plan:
        """Add the rating to the goal; its id is given, or the next free `{scale}-{n}` of the goal."""
        plan = _open_plan(plan, self.plan_id)
        goal = _goal(plan, self.goal_id)
        member = _on_team(plan, self.rated_by, "rated_by")
        taken = {c.id for c in goal.check_ins} | {r.id for r in goal.ratings}
        folded = {i.lower() for i in taken}
        rating_id = self.rating_id
        if rating_id is None:
            n = sum(1 for r in goal.ratings if r.scale == self.scale) + 1
            while f"{self.scale}-{n}".lower() in folded:
                n += 1
            rating_id = f"{self.scale}-{n}"
        elif rating_id in taken:
            raise Conflict(f"rating {rating_id} already exists on goal {goal.id}", goal_id=goal.id)
        else:
            refuse_case_twin("rating", rating_id, taken, "{twin} on goal " + goal.id, goal.id)
        rating = OutcomeRating(rating_id, self.scale, self.score, self.occasion, member.id, self.at, self.note)
        problems = check_rating(rating, "rating")
        if problems:
            raise RuleViolation(problems[0].message, goal_id=goal.id, errors={p.path: p.message for p in problems})
        goal.ratings.append(rating)
        plan.touch(at)
        return plan
