"""Changes to steps: step.added, step.updated and step.done."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from service.domain.changes.base import (
    CLOSED_STEP,
    STEP_FIELDS,
    _goal,
    _on_team,
    _open_plan,
    _step,
)
from service.domain.errors import Conflict, RuleViolation
from service.domain.model import Plan, Step
from service.domain.types import Note


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
