"""Marshmallow schemas for team events; they validate input and turn it into domain commands."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from service.domain.model import COMPARATORS, GOAL_PRIORITIES, MEMBER_KINDS, Goal, Patient, Target
from service.domain.terminology import GOAL_PRIORITY_SYSTEM, ROLES, UCUM
from service.domain.types import Coding, Concept, Identifier, Quantity
from service.services.events import ProposeGoal, ProposerSpec

ID = validate.Regexp(r"^[A-Za-z0-9\-.]{1,64}$", error="must be 1-64 letters, digits, '-' or '.'")
TEXT = validate.Length(min=1, max=2000)


class IdentifierSchema(Schema):
    system = fields.String(required=True, validate=validate.Length(min=1, max=500))
    value = fields.String(required=True, validate=validate.Length(min=1, max=200))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Identifier:
        return Identifier(**data)


class CodingSchema(Schema):
    system = fields.String(validate=validate.Length(min=1, max=500))
    code = fields.String(validate=validate.Length(min=1, max=200))
    display = fields.String(validate=validate.Length(min=1, max=500))

    @validates_schema
    def code_or_text(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("code") and not data.get("display"):
            raise ValidationError("a code or a display text is required", "code")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Coding:
        return Coding(**data)


class PatientSchema(Schema):
    mrn = fields.String(required=True, validate=validate.Length(min=1, max=64))
    display_name = fields.String(validate=validate.Length(min=1, max=200))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Patient:
        return Patient(**data)


class ProposerSchema(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(MEMBER_KINDS))
    member_id = fields.String(validate=ID)
    identifier = fields.Nested(IdentifierSchema)
    display = fields.String(validate=validate.Length(min=1, max=200))
    role = fields.String(validate=validate.OneOf(sorted(ROLES)))

    @validates_schema
    def identified(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("kind") != "patient" and "identifier" not in data and "display" not in data:
            raise ValidationError("a practitioner or related person needs an identifier or a display", "identifier")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ProposerSpec:
        return ProposerSpec(**data)


class TargetSchema(Schema):
    measure = fields.Nested(CodingSchema)
    value = fields.Decimal(allow_nan=False, validate=validate.Range(min=-1e12, max=1e12))
    comparator = fields.String(validate=validate.OneOf(COMPARATORS))
    unit = fields.String(validate=validate.Length(min=1, max=64))
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


class ProposedGoalSchema(Schema):
    id = fields.String(required=True, validate=ID)
    description = fields.String(required=True, validate=TEXT)
    priority = fields.String(validate=validate.OneOf(GOAL_PRIORITIES))
    proposed_by = fields.Nested(ProposerSchema, required=True)
    start_date = fields.Date()
    targets = fields.List(fields.Nested(TargetSchema), validate=validate.Length(max=20))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> tuple[Goal, ProposerSpec]:
        priority = data.get("priority")
        goal = Goal(
            id=data["id"],
            description=Concept(text=data["description"]),
            priority=Concept(codings=[Coding(GOAL_PRIORITY_SYSTEM, priority)]) if priority else None,
            start_date=data["start_date"].isoformat() if "start_date" in data else None,
            targets=data.get("targets", []),
        )
        return goal, data["proposed_by"]


class GoalProposedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    patient = fields.Nested(PatientSchema, required=True)
    goal = fields.Nested(ProposedGoalSchema, required=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ProposeGoal:
        goal, proposer = data["goal"]
        return ProposeGoal(plan_id=data["plan_id"], patient=data["patient"], goal=goal, proposer=proposer)


class EventSchema(Schema):
    """The Standard Webhooks payload shape: a type, a timestamp and the event's data."""

    type = fields.String(required=True)
    timestamp = fields.AwareDateTime(required=True)
    data = fields.Dict(required=True)


EVENT_DATA_SCHEMAS: dict[str, type[Schema]] = {
    "goal.proposed": GoalProposedDataSchema,
}
