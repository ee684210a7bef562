"""Marshmallow schemas for team events; they validate input and turn it into domain commands.

One `<Type>DataSchema` per event type (docs/events.md is the catalogue); `EVENT_DATA_SCHEMAS` maps
the type to it. Dates become ISO strings here, so the domain keeps them as they came.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from service.domain.changes import (
    AddNote,
    AddStep,
    ChangeGoalStatus,
    CompleteStep,
    CreatePlan,
    DeclineGoalSetting,
    JoinMember,
    LeaveMember,
    ProposeGoal,
    ProposerSpec,
    RecordAgreement,
    RecordCheckIn,
    ResumeGoalSetting,
    ReviewPlan,
    ReviseGoal,
    UpdatePlan,
    UpdateStep,
)
from service.domain.model import (
    AGREEMENT_STATUSES,
    COMPARATORS,
    GOAL_ACHIEVEMENT_STATUSES,
    GOAL_LIFECYCLE_STATUSES,
    GOAL_PRIORITIES,
    MEMBER_KINDS,
    PLAN_INTENTS,
    PLAN_STATUSES,
    STEP_STATUSES,
    Goal,
    Patient,
    Step,
    Target,
)
from service.domain.terminology import GOAL_ACHIEVEMENT_SYSTEM, GOAL_PRIORITY_SYSTEM, ROLES, UCUM
from service.domain.types import Coding, Concept, Identifier, Note, Quantity

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


def priority_concept(code: str | None) -> Concept | None:
    """Return a goal-priority concept for a code, or None."""
    return Concept(codings=[Coding(GOAL_PRIORITY_SYSTEM, code)]) if code else None


def coded_or_text(coding: Coding | None) -> Concept | None:
    """Return a concept from a coding: coded when it has a code, else the display as words."""
    if coding is None:
        return None
    return Concept(codings=[coding]) if coding.code else Concept(text=coding.display)


class GoalFieldsSchema(Schema):
    """A goal's own fields, shared by goal.proposed and goal.revised."""

    id = fields.String(required=True, validate=ID)
    description = fields.String(required=True, validate=TEXT)
    priority = fields.String(validate=validate.OneOf(GOAL_PRIORITIES))
    start_date = fields.Date()
    due_date = fields.Date()
    targets = fields.List(fields.Nested(TargetSchema), validate=validate.Length(max=20))

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


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _at_least_one(data: dict[str, Any], names: tuple[str, ...]) -> None:
    if not any(n in data for n in names):
        raise ValidationError(f"give at least one of {', '.join(names)}", "_schema")


class PeriodSchema(Schema):
    start = fields.Date()
    end = fields.Date(allow_none=True)

    @validates_schema
    def ordered(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("start") and data.get("end") and data["end"] < data["start"]:
            raise ValidationError("the period ends before it starts", "end")


class DurationSchema(Schema):
    value = fields.Integer(required=True, validate=validate.Range(min=1, max=120))
    unit = fields.String(required=True, validate=validate.OneOf(("d", "wk", "mo", "a")))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Quantity:
        return Quantity(Decimal(data["value"]), None, data["unit"], UCUM, data["unit"])


class NoteSchema(Schema):
    text = fields.String(required=True, validate=TEXT)
    author = fields.String(validate=ID)
    time = fields.AwareDateTime()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Note:
        return Note(data["text"], author_member=data.get("author"), time=_iso(data.get("time")))


class PlanCreatedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    patient = fields.Nested(PatientSchema, required=True)
    status = fields.String(validate=validate.OneOf(("draft", "active")))
    title = fields.String(validate=validate.Length(min=1, max=200))
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
            period_start=_iso(period.get("start")),
            period_end=_iso(period.get("end")),
            review_every=data.get("review_every"),
            next_review=_iso(data.get("next_review")),
            categories=[c for c in map(coded_or_text, data.get("categories", [])) if c],
            author=data.get("author"),
        )


class PlanUpdatedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    title = fields.String(allow_none=True, validate=validate.Length(min=1, max=200))
    status = fields.String(validate=validate.OneOf([s for s in PLAN_STATUSES if s != "unknown"]))
    intent = fields.String(validate=validate.OneOf(PLAN_INTENTS))
    what_matters = fields.String(allow_none=True, validate=TEXT)
    period = fields.Nested(PeriodSchema)
    review_every = fields.Nested(DurationSchema, allow_none=True)
    next_review = fields.Date(allow_none=True)
    categories = fields.List(fields.Nested(CodingSchema), validate=validate.Length(max=10))

    @validates_schema
    def something(self, data: dict[str, Any], **_: Any) -> None:
        _at_least_one(data, tuple(n for n in self.fields if n != "plan_id"))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> UpdatePlan:
        changes = {k: v for k, v in data.items() if k not in ("plan_id", "period", "next_review", "categories")}
        for key in ("start", "end"):
            if key in data.get("period", {}):
                changes[f"period_{key}"] = _iso(data["period"][key])
        if "next_review" in data:
            changes["next_review"] = _iso(data["next_review"])
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
            next_review=_iso(data.get("next_review")),
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


class MemberJoinedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    member_id = fields.String(required=True, validate=ID)
    kind = fields.String(required=True, validate=validate.OneOf(MEMBER_KINDS))
    role = fields.String(validate=validate.OneOf(sorted(ROLES)))
    name = fields.String(validate=validate.Length(min=1, max=200))
    identifier = fields.Nested(IdentifierSchema)

    @validates_schema
    def identified(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("kind") != "patient" and "identifier" not in data and "name" not in data:
            raise ValidationError("a practitioner or related person needs an identifier or a name", "identifier")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> JoinMember:
        return JoinMember(**data)


class MemberLeftDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    member_id = fields.String(required=True, validate=ID)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> LeaveMember:
        return LeaveMember(**data)


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
        _at_least_one(data, ("lifecycle_status", "achievement"))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ChangeGoalStatus:
        code = data.get("achievement")
        return ChangeGoalStatus(
            plan_id=data["plan_id"],
            goal_id=data["goal_id"],
            lifecycle_status=data.get("lifecycle_status"),
            achievement=Concept(codings=[Coding(GOAL_ACHIEVEMENT_SYSTEM, code)]) if code else None,
            reason=data.get("reason"),
            date=_iso(data.get("date")),
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
    at = fields.AwareDateTime(required=True)
    measure = fields.Nested(CodingSchema)
    value = fields.Decimal(allow_nan=False, validate=validate.Range(min=-1e12, max=1e12))
    unit = fields.String(validate=validate.Length(min=1, max=64))
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


OPEN_STEP_STATUSES = ("not-started", "scheduled", "in-progress", "on-hold")


class StepFieldsSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    step_id = fields.String(required=True, validate=ID)
    description = fields.String(allow_none=True, validate=TEXT)
    goal_ids = fields.List(fields.String(validate=ID), validate=validate.Length(max=20))
    owner = fields.String(allow_none=True, validate=ID)
    start_date = fields.Date(allow_none=True)
    due_date = fields.Date(allow_none=True)
    schedule = fields.String(allow_none=True, validate=validate.Length(min=1, max=200))

    @validates_schema
    def schedule_or_dates(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("schedule") and (data.get("start_date") or data.get("due_date")):
            raise ValidationError("a step has a schedule text or dates, not both", "schedule")
        if data.get("start_date") and data.get("due_date") and data["due_date"] < data["start_date"]:
            raise ValidationError("the step is due before it starts", "due_date")


class StepAddedDataSchema(StepFieldsSchema):
    title = fields.String(required=True, validate=validate.Length(min=1, max=200))
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
            start_date=_iso(data.get("start_date")),
            due_date=_iso(data.get("due_date")),
            schedule=data.get("schedule"),
        )
        return AddStep(data["plan_id"], step)


class StepUpdatedDataSchema(StepFieldsSchema):
    title = fields.String(validate=validate.Length(min=1, max=200))
    status = fields.String(validate=validate.OneOf([s for s in STEP_STATUSES if s != "unknown"]))
    progress = fields.Nested(NoteSchema)

    @validates_schema
    def something(self, data: dict[str, Any], **_: Any) -> None:
        _at_least_one(data, tuple(n for n in self.fields if n not in ("plan_id", "step_id")))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> UpdateStep:
        changes = {k: v for k, v in data.items() if k not in ("plan_id", "step_id", "progress")}
        for key in ("start_date", "due_date"):
            if key in changes:
                changes[key] = _iso(changes[key])
        return UpdateStep(data["plan_id"], data["step_id"], changes, data.get("progress"))


class StepDoneDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    step_id = fields.String(required=True, validate=ID)
    date = fields.Date()
    note = fields.String(validate=TEXT)
    by = fields.String(validate=ID)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> CompleteStep:
        return CompleteStep(data["plan_id"], data["step_id"], _iso(data.get("date")), data.get("note"), data.get("by"))


class NoteAddedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    goal_id = fields.String(validate=ID)
    text = fields.String(required=True, validate=TEXT)
    author = fields.String(required=True, validate=ID)
    time = fields.AwareDateTime()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> AddNote:
        return AddNote(data["plan_id"], data["text"], data["author"], data.get("goal_id"), _iso(data.get("time")))


class EventSchema(Schema):
    """The Standard Webhooks payload shape: a type, a timestamp and the event's data."""

    type = fields.String(required=True)
    timestamp = fields.AwareDateTime(required=True)
    data = fields.Dict(required=True)


EVENT_DATA_SCHEMAS: dict[str, type[Schema]] = {
    "plan.created": PlanCreatedDataSchema,
    "plan.updated": PlanUpdatedDataSchema,
    "plan.reviewed": PlanReviewedDataSchema,
    "goal_setting.declined": GoalSettingDeclinedDataSchema,
    "goal_setting.resumed": GoalSettingResumedDataSchema,
    "member.joined": MemberJoinedDataSchema,
    "member.left": MemberLeftDataSchema,
    "goal.proposed": GoalProposedDataSchema,
    "goal.revised": GoalRevisedDataSchema,
    "goal.status_changed": GoalStatusChangedDataSchema,
    "agreement.recorded": AgreementRecordedDataSchema,
    "checkin.recorded": CheckinRecordedDataSchema,
    "step.added": StepAddedDataSchema,
    "step.updated": StepUpdatedDataSchema,
    "step.done": StepDoneDataSchema,
    "note.added": NoteAddedDataSchema,
}
