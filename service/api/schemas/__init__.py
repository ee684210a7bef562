"""Marshmallow schemas for team events; they validate input and turn it into domain commands.

One `<Type>DataSchema` per event type (docs/events.md is the catalogue); `EVENT_DATA_SCHEMAS` maps
the type to it. Dates become ISO strings here, so the domain keeps them as they came.
The schemas live by area in common, plan, team, goals and steps; this package re-exports them.
"""

from __future__ import annotations

from marshmallow import Schema, fields

from service.api.schemas.common import (
    ID,
    TEXT,
    CodingSchema,
    IdentifierSchema,
    NoteSchema,
    PatientSchema,
    ProposerSchema,
    coded_or_text,
)
from service.api.schemas.goals import (
    AgreementRecordedDataSchema,
    CheckinRecordedDataSchema,
    ContingencySchema,
    GoalFieldsSchema,
    GoalProposedDataSchema,
    GoalRevisedDataSchema,
    GoalStatusChangedDataSchema,
    OutcomeRecordedDataSchema,
    ProposedGoalSchema,
    RevisedGoalSchema,
    TargetSchema,
    priority_concept,
)
from service.api.schemas.plan import (
    DurationSchema,
    GoalSettingDeclinedDataSchema,
    GoalSettingResumedDataSchema,
    NoteAddedDataSchema,
    PeriodSchema,
    PlanCreatedDataSchema,
    PlanReviewedDataSchema,
    PlanUpdatedDataSchema,
)
from service.api.schemas.steps import (
    OPEN_STEP_STATUSES,
    StepAddedDataSchema,
    StepDoneDataSchema,
    StepFieldsSchema,
    StepUpdatedDataSchema,
)
from service.api.schemas.team import (
    MemberJoinedDataSchema,
    MemberLeftDataSchema,
)


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
    "outcome.recorded": OutcomeRecordedDataSchema,
    "step.added": StepAddedDataSchema,
    "step.updated": StepUpdatedDataSchema,
    "step.done": StepDoneDataSchema,
    "note.added": NoteAddedDataSchema,
}

__all__ = [
    "EVENT_DATA_SCHEMAS",
    "ID",
    "OPEN_STEP_STATUSES",
    "TEXT",
    "AgreementRecordedDataSchema",
    "CheckinRecordedDataSchema",
    "CodingSchema",
    "ContingencySchema",
    "DurationSchema",
    "EventSchema",
    "GoalFieldsSchema",
    "GoalProposedDataSchema",
    "GoalRevisedDataSchema",
    "GoalSettingDeclinedDataSchema",
    "GoalSettingResumedDataSchema",
    "GoalStatusChangedDataSchema",
    "IdentifierSchema",
    "MemberJoinedDataSchema",
    "MemberLeftDataSchema",
    "NoteAddedDataSchema",
    "NoteSchema",
    "OutcomeRecordedDataSchema",
    "PatientSchema",
    "PeriodSchema",
    "PlanCreatedDataSchema",
    "PlanReviewedDataSchema",
    "PlanUpdatedDataSchema",
    "ProposedGoalSchema",
    "ProposerSchema",
    "RevisedGoalSchema",
    "StepAddedDataSchema",
    "StepDoneDataSchema",
    "StepFieldsSchema",
    "StepUpdatedDataSchema",
    "TargetSchema",
    "coded_or_text",
    "priority_concept",
]
