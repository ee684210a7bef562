"""Schemas for events on the plan itself: plan.created/updated/reviewed, goal setting, note.added."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from service.api.schemas.common import (
    ID,
    SHORT_TEXT,
    TEXT,
    CodingSchema,
    FhirDateTime,
    PatientSchema,
    ProposerSchema,
    at_least_one,
    coded_or_text,
    iso_date,
)
from service.domain.changes import (
    AddNote,
    CreatePlan,
    DeclineGoalSetting,
    ResumeGoalSetting,
    ReviewPlan,
    UpdatePlan,
)
from service.domain.model import (
    PLAN_INTENTS,
    PLAN_STATUSES,
)
from service.domain.terminology import UCUM
from service.domain.types import Quantity


class PeriodSchema(Schema):
    start = fields.Date()
    end = fields.Date(allow_none=True)

    @validates_schema
    def ordered(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("start") and data.get("end") and data["end"] < data["start"]:
            raise ValidationError("the period ends before it starts", "end")


class DurationSchema(Schema):
    value = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=120))  # a JSON number
    unit = fields.String(required=True, validate=validate.OneOf(("d", "wk", "mo", "a")))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Quantity:
        return Quantity(Decimal(data["value"]), None, data["unit"], UCUM, data["unit"])


class PlanCreatedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    patient = fields.Nested(PatientSchema, required=True)
    status = fields.String(validate=validate.OneOf(("draft", "active")))
    title = fields.String(validate=SHORT_TEXT)
    what_matters = fields.String(validate=TEXT)
    period = fields.Nested(PeriodSchema)
    review_every = fields.Nested(DurationSchema)
    next_review = fields.Date()
    categories = fields.List(fields.Nested(CodingSchema), validate=validate.Length(max=10))
    author = fields.Nested(ProposerSchema)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> CreatePlan:
        period = data.get("period", {})
        return CreatePlan(
            plan_id=data["plan_id"],
            patient=data["patient"],
            status=data.get("status", "active"),
            title=data.get("title"),
            what_matters=data.get("what_matters"),
            period_start=iso_date(period.get("start")),
            period_end=iso_date(period.get("end")),
            review_every=data.get("review_every"),
            next_review=iso_date(data.get("next_review")),
            categories=[c for c in map(coded_or_text, data.get("categories", [])) if c],
            author=data.get("author"),
        )


class PlanUpdatedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    title = fields.String(allow_none=True, validate=SHORT_TEXT)
    status = fields.String(validate=validate.OneOf([s for s in PLAN_STATUSES if s != "unknown"]))
    intent = fields.String(validate=validate.OneOf(PLAN_INTENTS))
    what_matters = fields.String(allow_none=True, validate=TEXT)
    period = fields.Nested(PeriodSchema)
    review_every = fields.Nested(DurationSchema, allow_none=True)
    next_review = fields.Date(allow_none=True)
    categories = fields.List(fields.Nested(CodingSchema), validate=validate.Length(max=10))

    @validates_schema
    def something(self, data: dict[str, Any], **_: Any) -> None:
        at_least_one(data, tuple(n for n in self.fields if n != "plan_id"))
        if data.get("period") == {}:  # no bound given: nothing would change, yet the plan's version would
            raise ValidationError("give start or end (end: null clears it)", "period")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> UpdatePlan:
        changes = {k: v for k, v in data.items() if k not in ("plan_id", "period", "next_review", "categories")}
        for key in ("start", "end"):
            if key in data.get("period", {}):
                changes[f"period_{key}"] = iso_date(data["period"][key])
        if "next_review" in data:
            changes["next_review"] = iso_date(data["next_review"])
        if "categories" in data:
            changes["categories"] = [c for c in map(coded_or_text, data["categories"]) if c]
        return UpdatePlan(plan_id=data["plan_id"], changes=changes)


class PlanReviewedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    reviewed_on = fields.Date(required=True)
    next_review = fields.Date()
    note = fields.String(validate=TEXT)
    by = fields.String(validate=ID)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ReviewPlan:
        return ReviewPlan(
            plan_id=data["plan_id"],
            reviewed_on=data["reviewed_on"].isoformat(),
            next_review=iso_date(data.get("next_review")),
            note=data.get("note"),
            by=data.get("by"),
        )


class GoalSettingDeclinedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    date = fields.Date(required=True)
    note = fields.String(validate=TEXT)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> DeclineGoalSetting:
        return DeclineGoalSetting(data["plan_id"], data["date"].isoformat(), data.get("note"))


class GoalSettingResumedDataSchema(GoalSettingDeclinedDataSchema):
    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ResumeGoalSetting:
        return ResumeGoalSetting(data["plan_id"], data["date"].isoformat(), data.get("note"))


class NoteAddedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    goal_id = fields.String(validate=ID)
    text = fields.String(required=True, validate=TEXT)
    author = fields.String(required=True, validate=ID)
    time = FhirDateTime()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> AddNote:
        return AddNote(data["plan_id"], data["text"], data["author"], data.get("goal_id"), iso_date(data.get("time")))
