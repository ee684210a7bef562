"""Schemas for step events: step.added, step.updated and step.done."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from service.api.schemas.common import (
    ID,
    SHORT_TEXT,
    TEXT,
    NoteSchema,
    at_least_one,
    iso_date,
)
from service.domain.changes import (
    AddStep,
    CompleteStep,
    UpdateStep,
)
from service.domain.model import (
    STEP_STATUSES,
    Step,
)

OPEN_STEP_STATUSES = ("not-started", "scheduled", "in-progress", "on-hold")


class StepFieldsSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    step_id = fields.String(required=True, validate=ID)
    description = fields.String(allow_none=True, validate=TEXT)
    goal_ids = fields.List(fields.String(validate=ID), validate=validate.Length(max=20))
    owner = fields.String(allow_none=True, validate=ID)
    start_date = fields.Date(allow_none=True)
    due_date = fields.Date(allow_none=True)
    schedule = fields.String(allow_none=True, validate=SHORT_TEXT)

    @validates_schema
    def schedule_or_dates(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("schedule") and (data.get("start_date") or data.get("due_date")):
            raise ValidationError("a step has a schedule text or dates, not both", "schedule")
        if data.get("start_date") and data.get("due_date") and data["due_date"] < data["start_date"]:
            raise ValidationError("the step is due before it starts", "due_date")


class StepAddedDataSchema(StepFieldsSchema):
    title = fields.String(required=True, validate=SHORT_TEXT)
    status = fields.String(validate=validate.OneOf(OPEN_STEP_STATUSES))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> AddStep:
        step = Step(
            id=data["step_id"],
            title=data["title"],
            status=data.get("status", "not-started"),
            description=data.get("description"),
            goal_ids=data.get("goal_ids", []),
            owner=data.get("owner"),
            start_date=iso_date(data.get("start_date")),
            due_date=iso_date(data.get("due_date")),
            schedule=data.get("schedule"),
        )
        return AddStep(data["plan_id"], step)


class StepUpdatedDataSchema(StepFieldsSchema):
    title = fields.String(validate=SHORT_TEXT)
    status = fields.String(validate=validate.OneOf([s for s in STEP_STATUSES if s != "unknown"]))
    progress = fields.Nested(NoteSchema)

    @validates_schema
    def something(self, data: dict[str, Any], **_: Any) -> None:
        at_least_one(data, tuple(n for n in self.fields if n not in ("plan_id", "step_id")))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> UpdateStep:
        changes = {k: v for k, v in data.items() if k not in ("plan_id", "step_id", "progress")}
        for key in ("start_date", "due_date"):
            if key in changes:
                changes[key] = iso_date(changes[key])
        return UpdateStep(data["plan_id"], data["step_id"], changes, data.get("progress"))


class StepDoneDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    step_id = fields.String(required=True, validate=ID)
    date = fields.Date()
    note = fields.String(validate=TEXT)
    by = fields.String(validate=ID)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> CompleteStep:
        return CompleteStep(
            data["plan_id"], data["step_id"], iso_date(data.get("date")), data.get("note"), data.get("by")
        )
