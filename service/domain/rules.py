"""The plan's rules: FHIR's required bindings and invariants, and the rules of collaboration.

Each problem is an `Issue` naming the element path in the plan JSON, so an API answer or
`planbridge validate` can point at it. The collaboration rules (README, "Rules of collaboration"):
- a goal is `accepted`, `active` or `completed` only if the patient has not disagreed with it;
  with no recorded patient agreement at all that is a warning (EHRs often do not record it);
- everyone whose agreement is recorded, who proposed a goal, or owns a step is in the plan's team;
- a member's agreement is recorded at most once per goal;
- while the patient has declined to set goals, no goal is `proposed`, `accepted` or `active`.
Outcome ratings are checked too: a known scale and occasion, a score in the scale's range (GBO 0-10,
GAS -2..+2), a rater named in the team, ids unique among a goal's check-ins and ratings (both are
Observations identified by the goal and that id); GAS level descriptions are keyed "-2".."2", a GAS
weight is positive, a contingency has an "if" and a "then" and an owner named in the team.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from service.domain import model
from service.domain.model import Goal, OutcomeRating, Plan, Target


@dataclass(frozen=True)
class Issue:
    """One problem: where, what, and whether it blocks (error) or only warns."""

    path: str
    message: str
    severity: str = "error"
    code: str = "invalid"


def _enum(value: str | None, allowed: tuple[str, ...], path: str) -> list[Issue]:
    if value is None or value in allowed:
        return []
    return [Issue(path, f"{value!r} is not one of {', '.join(allowed)}", code="code-invalid")]


def _duplicates(ids: list[str], path: str) -> list[Issue]:
    if len(set(ids)) == len(ids):  # nearly always: no Counter (its isinstance(Mapping) check cost more than the rest)
        return []
    return [Issue(path, f"id {i!r} is used {n} times", code="duplicate") for i, n in Counter(ids).items() if n > 1]


def check_target(target: Target, path: str) -> list[Issue]:
    """Check one target: one detail at most, gol-1 (a detail needs a measure), one kind of due."""
    issues = []
    details = target.details()
    if len(details) > 1:
        issues.append(Issue(path, f"a target has one detail, not {', '.join(details)}"))
    if details and target.measure is None:
        issues.append(Issue(f"{path}.measure", "gol-1: a target with a detail needs a measure", code="invariant"))
    if target.due_date is not None and target.due_duration is not None:
        issues.append(Issue(path, "a target is due on a date or after a duration, not both"))
    if target.quantity is not None:
        issues += _enum(target.quantity.comparator, model.COMPARATORS, f"{path}.quantity.comparator")
    return issues


def _check_goal(plan: Plan, goal: Goal, path: str) -> list[Issue]:
    members = {m.id for m in plan.team}
    issues = _enum(goal.lifecycle_status, model.GOAL_LIFECYCLE_STATUSES, f"{path}.lifecycle_status")
    if not goal.description.text and not goal.description.codings:
        issues.append(Issue(f"{path}.description", "a goal needs a description", code="required"))
    for i, target in enumerate(goal.targets):
        issues += check_target(target, f"{path}.targets[{i}]")
    for i, agreement in enumerate(goal.agreements):
        issues += _enum(agreement.status, model.AGREEMENT_STATUSES, f"{path}.agreements[{i}].status")
        if agreement.member_id not in members:
            issues.append(Issue(f"{path}.agreements[{i}].member_id", "agreement from someone not on the team"))
    issues += _duplicates([a.member_id for a in goal.agreements], f"{path}.agreements")
    issues += _duplicates([c.id for c in goal.check_ins], f"{path}.check_ins")
    issues += _check_outcomes(goal, members, path)
    if goal.proposed_by is not None and goal.proposed_by not in members:
        issues.append(Issue(f"{path}.proposed_by", "proposed by someone not named in the team"))
    if goal.replaces is not None and plan.goal(goal.replaces) is None:
        issues.append(Issue(f"{path}.replaces", f"replaces unknown goal {goal.replaces!r}"))
    issues += _collaboration(plan, goal, path)
    return issues


def check_rating(rating: OutcomeRating, path: str) -> list[Issue]:
    """Check one outcome rating on its own: its scale, occasion, and a score in the scale's range."""
    issues = _enum(rating.scale, model.OUTCOME_SCALES, f"{path}.scale")
    issues += _enum(rating.occasion, model.OUTCOME_OCCASIONS, f"{path}.occasion")
    low, high = model.SCORE_RANGES.get(rating.scale, (None, None))
    if type(rating.score) is not int:
        issues.append(Issue(f"{path}.score", "a score is a whole number", code="value"))
    elif low is not None and not low <= rating.score <= high:
        issues.append(Issue(f"{path}.score", f"a {rating.scale} score is from {low} to {high}", code="value"))
    return issues


def _check_outcomes(goal: Goal, members: set[str], path: str) -> list[Issue]:
    issues = []
    for i, rating in enumerate(goal.ratings):
        issues += check_rating(rating, f"{path}.ratings[{i}]")
        if rating.rated_by not in members:
            issues.append(Issue(f"{path}.ratings[{i}].rated_by", f"{rating.rated_by!r} is not in the team"))
    taken = {c.id for c in goal.check_ins}
    issues += _duplicates([r.id for r in goal.ratings], f"{path}.ratings")
    for i, rating in enumerate(goal.ratings):
        if rating.id in taken:
            issues.append(
                Issue(f"{path}.ratings[{i}].id", f"id {rating.id!r} is a check-in's of this goal", code="duplicate")
            )
    issues += [
        Issue(f"{path}.gas_levels.{k}", f"a GAS level is one of {', '.join(model.GAS_LEVELS)}", code="code-invalid")
        for k in goal.gas_levels
        if k not in model.GAS_LEVELS
    ]
    if goal.gas_weight is not None and not (math.isfinite(goal.gas_weight) and goal.gas_weight > 0):
        issues.append(Issue(f"{path}.gas_weight", "a GAS weight is a positive number", code="value"))
    for i, contingency in enumerate(goal.contingencies):
        if not contingency.if_.strip() or not contingency.then.strip():
            issues.append(Issue(f"{path}.contingencies[{i}]", "a contingency needs an if and a then", code="required"))
        if contingency.owner is not None and contingency.owner not in members:
            issues.append(Issue(f"{path}.contingencies[{i}].owner", f"{contingency.owner!r} is not in the team"))
    return issues


def _collaboration(plan: Plan, goal: Goal, path: str) -> list[Issue]:
    patient = plan.patient_member()
    agreed = goal.agreement(patient.id) if patient else None
    issues = []
    if goal.lifecycle_status in ("accepted", "active", "completed"):
        if agreed is not None and agreed.status == "disagree":
            issues.append(
                Issue(f"{path}.lifecycle_status", "the patient disagrees with this goal", code="business-rule")
            )
        elif agreed is None or agreed.status != "agree":
            issues.append(
                Issue(f"{path}.agreements", "no recorded agreement from the patient", "warning", "business-rule")
            )
    if plan.goal_setting == "declined" and goal.lifecycle_status in ("proposed", "accepted", "active"):
        issues.append(
            Issue(f"{path}.lifecycle_status", "the patient has declined to set goals for now", code="business-rule")
        )
    return issues


def check_plan(plan: Plan) -> list[Issue]:
    """Return every problem with the plan; an empty list means it is valid."""
    issues = _enum(plan.status, model.PLAN_STATUSES, "status")
    issues += _enum(plan.intent, model.PLAN_INTENTS, "intent")
    issues += _enum(plan.goal_setting, model.GOAL_SETTING, "goal_setting")
    issues += _duplicates([m.id for m in plan.team], "team")
    issues += _duplicates([g.id for g in plan.goals], "goals")
    issues += _duplicates([s.id for s in plan.steps], "steps")
    members = {m.id for m in plan.team}
    for i, member in enumerate(plan.team):
        issues += _enum(member.kind, model.MEMBER_KINDS, f"team[{i}].kind")
    for name, member_id in [("author", plan.author)] + [
        (f"contributors[{i}]", c) for i, c in enumerate(plan.contributors)
    ]:
        if member_id is not None and member_id not in members:
            issues.append(Issue(name, f"{member_id!r} is not in the team"))
    for i, goal in enumerate(plan.goals):
        issues += _check_goal(plan, goal, f"goals[{i}]")
    for i, step in enumerate(plan.steps):
        issues += _enum(step.status, model.STEP_STATUSES, f"steps[{i}].status")
        if step.owner is not None and step.owner not in members:
            issues.append(Issue(f"steps[{i}].owner", f"{step.owner!r} is not in the team"))
        for goal_id in step.goal_ids:
            if plan.goal(goal_id) is None:
                issues.append(Issue(f"steps[{i}].goal_ids", f"unknown goal {goal_id!r}"))
        if step.schedule is not None and (step.start_date or step.due_date):
            issues.append(Issue(f"steps[{i}].schedule", "a step has a schedule text or dates, not both"))
    return issues


def errors(issues: list[Issue]) -> list[Issue]:
    """Return only the issues that block."""
    return [i for i in issues if i.severity == "error"]
