"""Changes to the plan's team: find_or_join, join, ProposerSpec, member.joined and member.left."""

from __future__ import annotations

from dataclasses import dataclass

from service.domain.changes.base import (
    CLOSED_STEP,
    _open_plan,
)
from service.domain.errors import Conflict, NotFound, RuleViolation
from service.domain.model import Member, Plan
from service.domain.terminology import ROLES
from service.domain.types import Coding, Concept, Identifier


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
