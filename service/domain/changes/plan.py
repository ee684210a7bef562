"""Changes to the plan itself: plan.created/updated/reviewed, goal setting declined/resumed, note.added."""

from __future__ import annotations

import calendar
import datetime
from dataclasses import dataclass, field
from typing import Any

from service.domain.changes.base import (
    DECLINED_REASON,
    PAUSED_BY_DECLINE,
    PLAN_FIELDS,
    _day,
    _goal,
    _on_team,
    _open_plan,
)
from service.domain.changes.team import ProposerSpec, find_or_join, join
from service.domain.errors import Conflict, RuleViolation
from service.domain.model import Patient, Plan
from service.domain.terminology import ROLES
from service.domain.types import Concept, Note, Quantity


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
