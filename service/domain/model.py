"""The shared care plan: a patient, their goals and who proposed them.

Codes are the FHIR R4 codes of the matching value sets, so a status means the same in the plan
JSON as on the FHIR server (https://hl7.org/fhir/R4/goal.html#terminology).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from service.domain.errors import Conflict, RuleViolation

GOAL_LIFECYCLE_STATUSES = (
    "proposed",
    "planned",
    "accepted",
    "active",
    "on-hold",
    "completed",
    "cancelled",
    "entered-in-error",
    "rejected",
)
GOAL_PRIORITIES = ("high-priority", "medium-priority", "low-priority")
PLAN_STATUSES = ("draft", "active", "on-hold", "completed", "revoked")
PROPOSER_KINDS = ("patient", "practitioner", "related-person")
COMPARATORS = ("<", "<=", ">=", ">")


@dataclass(frozen=True)
class Identifier:
    """A business identifier: a namespace URI and a value within it."""

    system: str
    value: str


@dataclass(frozen=True)
class Coding:
    """A code from a code system, with the text a person would read."""

    system: str | None = None
    code: str | None = None
    display: str | None = None


@dataclass
class Patient:
    """The person the plan belongs to, known to the hospital by their MRN."""

    mrn: str
    display_name: str | None = None


@dataclass
class Proposer:
    """Who put a goal forward: the patient, a practitioner or a related person."""

    kind: str
    identifier: Identifier | None = None
    display: str | None = None


@dataclass
class Target:
    """A measurable target: a measure, a value or text, and when it is due."""

    measure: Coding | None = None
    value: Decimal | None = None
    comparator: str | None = None
    unit: str | None = None
    text: str | None = None
    due_date: date | None = None


@dataclass
class Goal:
    """A goal in the patient's own words, with its status and targets."""

    id: str
    description: str
    lifecycle_status: str = "proposed"
    priority: str | None = None
    proposed_by: Proposer | None = None
    start_date: date | None = None
    targets: list[Target] = field(default_factory=list)


@dataclass
class Plan:
    """A shared plan: one patient, the goals agreed with them, and a version bumped per change."""

    id: str
    patient: Patient
    status: str = "draft"
    goals: list[Goal] = field(default_factory=list)
    version: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def goal(self, goal_id: str) -> Goal | None:
        """Return the goal with this id, or None."""
        return next((g for g in self.goals if g.id == goal_id), None)

    def propose_goal(self, goal: Goal, at: datetime) -> None:
        """Add a newly proposed goal; a goal id may be used once per plan."""
        if self.status in ("completed", "revoked"):
            raise RuleViolation(f"plan {self.id} is {self.status}: no new goals can be proposed", plan_id=self.id)
        if self.goal(goal.id) is not None:
            raise Conflict(f"goal {goal.id} already exists in plan {self.id}", goal_id=goal.id)
        if goal.lifecycle_status != "proposed":
            raise RuleViolation("a goal enters a plan as proposed", goal_id=goal.id)
        self.goals.append(goal)
        self.touch(at)

    def touch(self, at: datetime) -> None:
        """Record that the plan changed: bump the version and the update time."""
        self.version += 1
        self.updated_at = at
        if self.created_at is None:
            self.created_at = at
