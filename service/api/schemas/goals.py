"""Schemas for goal events: goal.proposed/revised/status_changed, agreement.recorded, checkin.recorded,
outcome.recorded."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from service.api.schemas.common import (
    ID,
    TEXT,
    UNIT,
    CodingSchema,
    FhirDateTime,
    PatientSchema,
    ProposerSchema,
    at_least_one,
    coded_or_text,
    iso_date,
)
from service.api.schemas.fhirtypes import JsonDecimal, JsonFloat
from service.domain.changes import (
    ChangeGoalStatus,
    ProposeGoal,
    ProposerSpec,
    RecordAgreement,
    RecordCheckIn,
    RecordOutcome,
    ReviseGoal,
)
from service.domain.model import (
    AGREEMENT_STATUSES,
    COMPARATORS,
    GAS_LEVELS,
    GOAL_ACHIEVEMENT_STATUSES,
    GOAL_LIFECYCLE_STATUSES,
    GOAL_PRIORITIES,
    OUTCOME_OCCASIONS,
    OUTCOME_SCALES,
    SCORE_RANGES,
    Contingency,
    Goal,
    Target,
)
from service.domain.terminology import GOAL_ACHIEVEMENT_SYSTEM, GOAL_PRIORITY_SYSTEM, UCUM
from service.domain.types import Coding, Concept, Quantity


class TargetSchema(Schema):
    measure = fields.Nested(CodingSchema)
    value = JsonDecimal(allow_nan=False, validate=validate.Range(min=-1e12, max=1e12))
    comparator = fields.String(validate=validate.OneOf(COMPARATORS))
    unit = fields.String(validate=UNIT)
    text = fields.String(validate=TEXT)
    due_date = fields.Date()

    @validates_schema
    def consistent(self, data: dict[str, Any], **_: Any) -> None:
        if "value" in data and "text" in data:
            raise ValidationError("give either a value or a text, not both", "text")
        if ("value" in data or "text" in data) and "measure" not in data:
            raise ValidationError("a target with a value or text needs a measure (FHIR gol-1)", "measure")
        if ("comparator" in data or "unit" in data) and "value" not in data:
            raise ValidationError("comparator and unit go with a value", "value")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Target:
        measure: Coding | None = data.get("measure")
        quantity = None
        if "value" in data:
            unit = data.get("unit")
            quantity = Quantity(data["value"], data.get("comparator"), unit, UCUM if unit else None, unit)
        concept = None
        if measure is not None:
            concept = Concept(codings=[measure]) if measure.code else Concept(text=measure.display)
        return Target(
            measure=concept,
            quantity=quantity,
            text=data.get("text"),
            due_date=data["due_date"].isoformat() if "due_date" in data else None,
        )


def priority_concept(code: str | None) -> Concept | None:
    """Return a goal-priority concept for a code, or None."""
    return Concept(codings=[Coding(GOAL_PRIORITY_SYSTEM, code)]) if code else None


class ContingencySchema(Schema):
    """An "if ..., then ..." plan for a setback: `{"if": ..., "then": ..., "owner"?: member id}`."""

    if_ = fields.String(required=True, data_key="if", validate=TEXT)
    then = fields.String(required=True, validate=TEXT)
    owner = fields.String(validate=ID)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Contingency:
        return Contingency(data["if_"], data["then"], data.get("owner"))


class GoalFieldsSchema(Schema):
    """A goal's own fields, shared by goal.proposed and goal.revised."""

    id = fields.String(required=True, validate=ID)
    description = fields.String(required=True, validate=TEXT)
    priority = fields.String(validate=validate.OneOf(GOAL_PRIORITIES))
    start_date = fields.Date()
    due_date = fields.Date()
    targets = fields.List(fields.Nested(TargetSchema), validate=validate.Length(max=20))
    barriers = fields.List(fields.String(validate=TEXT), validate=validate.Length(max=20))
    contingencies = fields.List(fields.Nested(ContingencySchema), validate=validate.Length(max=20))
    gas_levels = fields.Dict(
        keys=fields.String(validate=validate.OneOf(GAS_LEVELS)), values=fields.String(validate=TEXT)
    )
    gas_weight = JsonFloat(allow_nan=False, validate=validate.Range(min=0, max=1000, min_inclusive=False))

    def goal(self, data: dict[str, Any]) -> Goal:
        """Return the goal; a goal-level due date fills the targets that have none (or is one target)."""
        due = data["due_date"].isoformat() if "due_date" in data else None
        targets: list[Target] = data.get("targets", [])
        if due is not None:
            targets = [replace(t, due_date=t.due_date or due) for t in targets] or [Target(due_date=due)]
        return Goal(
            id=data["id"],
            description=Concept(text=data["description"]),
            priority=priority_concept(data.get("priority")),
            start_date=data["start_date"].isoformat() if "start_date" in data else None,
            targets=targets,
            barriers=data.get("barriers", []),
            contingencies=data.get("contingencies", []),
            gas_levels=data.get("gas_levels", {}),
            gas_weight=data.get("gas_weight"),
        )


class ProposedGoalSchema(GoalFieldsSchema):
    proposed_by = fields.Nested(ProposerSchema, required=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> tuple[Goal, ProposerSpec]:
        return self.goal(data), data["proposed_by"]


class RevisedGoalSchema(GoalFieldsSchema):
    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Goal:
        return self.goal(data)


class GoalProposedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    patient = fields.Nested(PatientSchema, required=True)
    goal = fields.Nested(ProposedGoalSchema, required=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ProposeGoal:
        goal, proposer = data["goal"]
        return ProposeGoal(plan_id=data["plan_id"], patient=data["patient"], goal=goal, proposer=proposer)


class GoalRevisedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    replaces = fields.String(required=True, validate=ID)
    goal = fields.Nested(RevisedGoalSchema, required=True)
    revised_by = fields.Nested(ProposerSchema, required=True)
    reason = fields.String(validate=TEXT)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ReviseGoal:
        return ReviseGoal(data["plan_id"], data["replaces"], data["goal"], data["revised_by"], data.get("reason"))


class GoalStatusChangedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    goal_id = fields.String(required=True, validate=ID)
    lifecycle_status = fields.String(validate=validate.OneOf(GOAL_LIFECYCLE_STATUSES))
    achievement = fields.String(validate=validate.OneOf(GOAL_ACHIEVEMENT_STATUSES))
    reason = fields.String(validate=TEXT)
    date = fields.Date()

    @validates_schema
    def something(self, data: dict[str, Any], **_: Any) -> None:
        at_least_one(data, ("lifecycle_status", "achievement"))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ChangeGoalStatus:
        code = data.get("achievement")
        return ChangeGoalStatus(
            plan_id=data["plan_id"],
            goal_id=data["goal_id"],
            lifecycle_status=data.get("lifecycle_status"),
            achievement=Concept(codings=[Coding(GOAL_ACHIEVEMENT_SYSTEM, code)]) if code else None,
            reason=data.get("reason"),
            date=iso_date(data.get("date")),
        )


class AgreementRecordedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    goal_id = fields.String(required=True, validate=ID)
    member_id = fields.String(required=True, validate=ID)
    status = fields.String(required=True, validate=validate.OneOf(AGREEMENT_STATUSES))
    priority = fields.String(validate=validate.OneOf(GOAL_PRIORITIES))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> RecordAgreement:
        return RecordAgreement(
            data["plan_id"], data["goal_id"], data["member_id"], data["status"], priority_concept(data.get("priority"))
        )


class CheckinRecordedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    goal_id = fields.String(required=True, validate=ID)
    checkin_id = fields.String(required=True, validate=ID)
    at = FhirDateTime(required=True)
    measure = fields.Nested(CodingSchema)
    value = JsonDecimal(allow_nan=False, validate=validate.Range(min=-1e12, max=1e12))
    unit = fields.String(validate=UNIT)
    rating = fields.Nested(CodingSchema)
    integer = fields.Integer(strict=True, validate=validate.Range(min=-(2**31), max=2**31 - 1))
    text = fields.String(validate=TEXT)
    note = fields.String(validate=TEXT)
    recorded_by = fields.String(validate=ID)

    @validates_schema
    def one_value(self, data: dict[str, Any], **_: Any) -> None:
        given = [n for n in ("value", "rating", "integer", "text") if n in data]
        if len(given) != 1:
            raise ValidationError("give exactly one of value, rating, integer or text", "value")
        if "unit" in data and "value" not in data:
            raise ValidationError("a unit goes with a value", "unit")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> RecordCheckIn:
        unit = data.get("unit")
        quantity = Quantity(data["value"], None, unit, UCUM if unit else None, unit) if "value" in data else None
        return RecordCheckIn(
            plan_id=data["plan_id"],
            goal_id=data["goal_id"],
            check_in_id=data["checkin_id"],
            at=data["at"].isoformat(),
            measure=coded_or_text(data.get("measure")),
            quantity=quantity,
            rating=coded_or_text(data.get("rating")),
            integer=data.get("integer"),
            text=data.get("text"),
            note=data.get("note"),
            recorded_by=data.get("recorded_by"),
        )


class OutcomeRecordedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    goal_id = fields.String(required=True, validate=ID)
    rating_id = fields.String(validate=ID)
    scale = fields.String(required=True, validate=validate.OneOf(OUTCOME_SCALES))
    score = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=-2, max=10, error="a score is a whole number: GBO 0 to 10, GAS -2 to +2"),
    )
    occasion = fields.String(required=True, validate=validate.OneOf(OUTCOME_OCCASIONS))
    rated_by = fields.String(required=True, validate=ID)
    at = FhirDateTime(required=True)
    note = fields.String(validate=TEXT)

    @validates_schema
    def in_range(self, data: dict[str, Any], **_: Any) -> None:
        low, high = SCORE_RANGES.get(data.get("scale", ""), (None, None))
        score = data.get("score")
        if low is not None and score is not None and not low <= score <= high:
            raise ValidationError(f"a {data['scale']} score is a whole number from {low} to {high}", "score")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> RecordOutcome:
        return RecordOutcome(
            plan_id=data["plan_id"],
            goal_id=data["goal_id"],
            scale=data["scale"],
            score=data["score"],
            occasion=data["occasion"],
            rated_by=data["rated_by"],
            at=data["at"].isoformat(),
            note=data.get("note"),
            rating_id=data.get("rating_id"),
        )
