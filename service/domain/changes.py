"""Changes to a plan as team events make them; each refuses what the plan's state does not allow."""

from __future__ import annotations

from service.domain.errors import Conflict, RuleViolation
from service.domain.model import Goal, Member, Plan
from service.domain.types import Coding, Concept, Identifier

CLOSED_PLAN = ("completed", "revoked", "entered-in-error")


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
