"""The shared care plan: a patient, their team, the goals they agree on, and the steps toward them.

Codes are FHIR R4's where FHIR has a value set (https://hl7.org/fhir/R4/goal.html#terminology,
https://hl7.org/fhir/R4/careplan.html#terminology), so a status means the same here as on the
server. `fhir_extra` fields hold what an EHR sent that the model does not name, so it can be
written back unchanged; planbridge never reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.domain.types import Concept, Identifier, Note, Quantity, Range, Ratio, Ref

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
GOAL_ACHIEVEMENT_STATUSES = (
    "in-progress",
    "improving",
    "worsening",
    "no-change",
    "achieved",
    "sustaining",
    "not-achieved",
    "no-progress",
    "not-attainable",
)
GOAL_PRIORITIES = ("high-priority", "medium-priority", "low-priority")
PLAN_STATUSES = ("draft", "active", "on-hold", "completed", "revoked", "entered-in-error", "unknown")
PLAN_INTENTS = ("proposal", "plan", "order", "option")
STEP_STATUSES = (
    "not-started",
    "scheduled",
    "in-progress",
    "on-hold",
    "completed",
    "cancelled",
    "stopped",
    "unknown",
    "entered-in-error",
)
AGREEMENT_STATUSES = ("agree", "disagree", "pending")
MEMBER_KINDS = ("patient", "practitioner", "related-person")
GOAL_SETTING = ("open", "declined")
COMPARATORS = ("<", "<=", ">=", ">")
CLOSED_GOAL_STATUSES = ("completed", "cancelled", "entered-in-error", "rejected")


REMOVAL_KINDS = ("deleted", "removed")

# Outcome ratings (docs/plan-format.md#outcomerating): Goal-Based Outcomes (GBO, 0-10) and Goal Attainment
# Scaling (GAS, -2..+2), each on a goal, at an occasion of the work together.
OUTCOME_SCALES = ("gbo", "gas")
OUTCOME_OCCASIONS = ("baseline", "session", "review", "end")
SCORE_RANGES = {"gbo": (0, 10), "gas": (-2, 2)}
GAS_LEVELS = ("-2", "-1", "0", "1", "2")


@dataclass
class Removal:
    """How the EHR took an item out of the plan, recorded by a pull instead of dropping the item.

    `how` is "deleted" (the Goal was deleted on the server) or "removed" (the CarePlan or CareTeam no
    longer names it); `at` is when planbridge learnt of it, `version` the last version of the resource
    it knew. Such an item stays in the plan, with its agreements and notes, and is never written to
    the server again.
    """

    at: str
    how: str
    version: str | None = None


@dataclass
class Patient:
    """The person the plan belongs to: known to the hospital by their MRN.

    `mrn_system` is the system of the MRN's identifier when it is not `PLANBRIDGE_MRN_SYSTEM`
    (absent: that one). `fhir_reference` ("Patient/123") is the EHR's own reference to the Patient,
    kept when the input did not carry the Patient's MRN (a Bundle whose Patient is referenced but
    absent); then `mrn` may be unknown. `fhir_extra` holds what the EHR's `subject` Reference carried
    besides `reference` and `display` (an `identifier`, a `type`...), written back unchanged.
    """

    mrn: str | None = None
    display_name: str | None = None
    id: str | None = None
    mrn_system: str | None = None
    fhir_reference: str | None = None
    fhir_extra: dict[str, Any] | None = None


@dataclass
class Member:
    """Someone on the team (or referred to by it): a practitioner, the patient or a related person.

    `fhir_reference` is set when the person already exists on the FHIR server under that reference;
    `in_team` is False for people a goal names who are not on the CareTeam.
    """

    id: str
    kind: str
    role: Concept | None = None
    name: str | None = None
    identifier: Identifier | None = None
    fhir_reference: str | None = None
    in_team: bool = True
    fhir_extra: dict[str, Any] = field(default_factory=dict)
    removed_in_ehr: Removal | None = None


@dataclass
class Agreement:
    """One member's agreement with a goal (FHIR goal-acceptance) and their own priority for it."""

    member_id: str
    status: str | None = None
    priority: Concept | None = None


@dataclass
class Target:
    """A measurable target: a measure, one kind of detail, and when it is due (date or duration)."""

    measure: Concept | None = None
    quantity: Quantity | None = None
    range: Range | None = None
    ratio: Ratio | None = None
    concept: Concept | None = None
    text: str | None = None
    boolean: bool | None = None
    integer: int | None = None
    due_date: str | None = None
    due_duration: Quantity | None = None
    fhir_extra: dict[str, Any] = field(default_factory=dict)

    def details(self) -> list[str]:
        """Return the names of the detail fields that are set (FHIR allows at most one)."""
        names = ("quantity", "range", "ratio", "concept", "text", "boolean", "integer")
        return [n for n in names if getattr(self, n) is not None]


@dataclass
class CheckIn:
    """A progress check-in on a goal: a measurement or rating at a time, with a note and who recorded it."""

    id: str
    at: str
    measure: Concept
    quantity: Quantity | None = None
    rating: Concept | None = None
    integer: int | None = None
    text: str | None = None
    note: str | None = None
    recorded_by: str | None = None
    status: str = "final"
    fhir_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutcomeRating:
    """A rating of how far a goal has come: a GBO score (0-10) or a GAS level (-2..+2), by a team member.

    `occasion` is when in the work it was given (baseline, session, review, end); `at` the instant.
    On FHIR it is an Observation coded from planbridge's outcome-scale CodeSystem (docs/mapping.md).
    """

    id: str
    scale: str
    score: int
    occasion: str
    rated_by: str
    at: str
    note: str | None = None
    fhir_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Contingency:
    """An "if ..., then ..." plan agreed for a setback on a goal, and who acts on it (a member id)."""

    if_: str = field(metadata={"json": "if"})
    then: str
    owner: str | None = None


@dataclass
class Goal:
    """A goal in the patient's own words, who proposed it, who agrees, its targets and progress."""

    id: str
    description: Concept
    lifecycle_status: str = "proposed"
    categories: list[Concept] = field(default_factory=list)
    priority: Concept | None = None
    achievement: Concept | None = None
    status_date: str | None = None
    status_reason: str | None = None
    proposed_by: str | None = None
    start_date: str | None = None
    targets: list[Target] = field(default_factory=list)
    addresses: list[Ref] = field(default_factory=list)
    barriers: list[str] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)
    check_ins: list[CheckIn] = field(default_factory=list)
    replaces: str | None = None
    identifiers: list[Identifier] = field(default_factory=list)
    fhir_extra: dict[str, Any] = field(default_factory=dict)
    removed_in_ehr: Removal | None = None
    ratings: list[OutcomeRating] = field(default_factory=list)
    # What each GAS level means for this goal ("-2" much less than expected ... "2" much more).
    gas_levels: dict[str, str] = field(default_factory=dict, metadata={"omit_empty": True})
    gas_weight: float | None = None  # this goal's weight in the plan's GAS T-score (absent: 1)
    contingencies: list[Contingency] = field(default_factory=list)

    def agreement(self, member_id: str) -> Agreement | None:
        """Return this member's agreement, or None when they have not given one."""
        return next((a for a in self.agreements if a.member_id == member_id), None)


@dataclass
class Step:
    """A small action toward one or more goals, with an owner from the team."""

    id: str
    title: str | None = None
    status: str = "not-started"
    description: str | None = None
    code: Concept | None = None
    goal_ids: list[str] = field(default_factory=list)
    owner: str | None = None
    start_date: str | None = None
    due_date: str | None = None
    schedule: str | None = None
    progress: list[Note] = field(default_factory=list)
    fhir_extra: dict[str, Any] = field(default_factory=dict)
    detail_extra: dict[str, Any] = field(default_factory=dict)
    removed_in_ehr: Removal | None = None


@dataclass
class Plan:
    """A shared plan: the patient, their team, goals and steps, and how the plan is reviewed.

    `goal_setting` is "declined" while the patient prefers not to set goals for now: a recorded
    choice, not an empty plan. `version` and `updated_at` are planbridge's own bookkeeping.
    """

    id: str
    patient: Patient
    status: str = "draft"
    intent: str = "plan"
    title: str | None = None
    period_start: str | None = None
    period_end: str | None = None
    what_matters: str | None = None
    goal_setting: str = "open"
    goal_setting_note: str | None = None
    goal_setting_date: str | None = None
    review_every: Quantity | None = None
    next_review: str | None = None
    author: str | None = None
    contributors: list[str] = field(default_factory=list)
    categories: list[Concept] = field(default_factory=list)
    team: list[Member] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    identifiers: list[Identifier] = field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None
    version: int = 0
    careplan_extra: dict[str, Any] = field(default_factory=dict)
    careteam_extra: dict[str, Any] = field(default_factory=dict)

    def goal(self, goal_id: str) -> Goal | None:
        """Return the goal with this id, or None."""
        return next((g for g in self.goals if g.id == goal_id), None)

    def member(self, member_id: str) -> Member | None:
        """Return the member with this id, or None."""
        return next((m for m in self.team if m.id == member_id), None)

    def step(self, step_id: str) -> Step | None:
        """Return the step with this id, or None."""
        return next((s for s in self.steps if s.id == step_id), None)

    def patient_member(self) -> Member | None:
        """Return the team member who is the patient, if the patient is on the team."""
        return next((m for m in self.team if m.kind == "patient"), None)

    def touch(self, at: str) -> None:
        """Record that the plan changed: bump the version and the update time (and the creation time of a
        new plan; a plan read from the EHR keeps the CarePlan's `created`, none if it had none)."""
        if self.created_at is None and self.version == 0:
            self.created_at = at
        self.version += 1
        self.updated_at = at
