"""The plan door: what a team event could not put into a plan, a whole plan coming in (`plans import`) cannot.

Team events check every id, text, code, number and list they carry with their schemas (service/api/schemas,
docs/events.md "Limits" and "Conventions"), and the domain refuses ids that differ only in case. A plan
imported whole skipped those rules: a plan id `pa/x` or `plan x/1`, a goal id `goal sleep`, an MRN with a
`|`, two goals `goal-walk` and `GOAL-WALK` were stored and pushed, and their identifiers collided on the
server. `door_issues` applies the same rules to a whole plan, each element checked by the validators of
the event field that sets it (the same objects, not copies), and names each element by its plan path
(`goals[0].id`), as `check_plan` does.

What only an event can give (a member's role shorthand, a goal priority code) is not asked of an imported
plan: its concepts may be the EHR's own. The rules about who may do what (service.domain.rules) are
`check_plan`'s; the FHIR checks are `convert`'s and the push's (service.services.deliverable).
"""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError
from marshmallow.fields import Dict, Field, List, Nested

from service.api.schemas import (
    CheckinRecordedDataSchema,
    CodingSchema,
    ContingencySchema,
    DurationSchema,
    GoalFieldsSchema,
    GoalSettingDeclinedDataSchema,
    GoalStatusChangedDataSchema,
    IdentifierSchema,
    MemberJoinedDataSchema,
    NoteSchema,
    OutcomeRecordedDataSchema,
    PatientSchema,
    PlanCreatedDataSchema,
    StepAddedDataSchema,
    TargetSchema,
)
from service.domain.changes.goals import same_but_case
from service.domain.model import CheckIn, Goal, Member, OutcomeRating, Plan, Step, Target
from service.domain.rules import Issue
from service.domain.types import Coding, Concept, Note, Quantity

__all__ = ["door_issues"]


@functools.cache
def _field(schema: type[Schema], name: str) -> Field:
    """The event field `name` of `schema` (its validators are the rule)."""
    return schema().fields[name]


def _messages(field: Field, value: Any) -> list[str]:
    found: list[str] = []
    for validator in field.validators:
        try:
            validator(value)
        except ValidationError as refused:
            messages = refused.messages
            found += [str(m) for m in messages] if isinstance(messages, list) else [str(messages)]
        except (TypeError, ValueError, AttributeError):  # a value of another type (a typed conflict resolution)
            found.append(f"not a valid value here: {type(value).__name__}")
            break
    return found


class _Door:
    """Collects the issues of one plan."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def check(self, path: str, value: Any, schema: type[Schema], name: str) -> None:
        """Check `value` (absent: nothing to check) as the event field `schema.name` checks it."""
        if value is None:
            return
        field = _field(schema, name)
        self.issues += [Issue(path, message, code="value") for message in _messages(field, value)]

    def check_list(self, path: str, values: list[Any], schema: type[Schema], name: str) -> None:
        """Check how many items a list holds (and each plain item) as the event's list field does."""
        field = _field(schema, name)
        assert isinstance(field, List)
        self.issues += [Issue(path, message, code="value") for message in _messages(field, values)]
        if not isinstance(field.inner, Nested):
            for i, item in enumerate(values):
                self.issues += [Issue(f"{path}[{i}]", m, code="value") for m in _messages(field.inner, item)]

    def coding(self, path: str, coding: Coding) -> None:
        self.check(f"{path}.system", coding.system, CodingSchema, "system")
        self.check(f"{path}.code", coding.code, CodingSchema, "code")
        self.check(f"{path}.display", coding.display, CodingSchema, "display")

    def concept(
        self, path: str, concept: Concept | None, text: tuple[type[Schema], str] = (CodingSchema, "display")
    ) -> None:
        """A concept an event gives as a coding (its words: a coding's display), or as `text`'s field."""
        if concept is None:
            return
        for i, coding in enumerate(concept.codings):
            self.coding(f"{path}.codings[{i}]", coding)
        self.check(f"{path}.text", concept.text, *text)

    def quantity(self, path: str, quantity: Quantity | None, schema: type[Schema]) -> None:
        """A measured value as a target's or a check-in's `value` and `unit`."""
        if quantity is None:
            return
        self.check(f"{path}.value", quantity.value, schema, "value")
        self.check(f"{path}.unit", quantity.unit, schema, "unit")

    def note(self, path: str, note: Note) -> None:
        self.check(f"{path}.text", note.text, NoteSchema, "text")
        self.check(f"{path}.author_member", note.author_member, NoteSchema, "author")

    def twins(self, path: str, ids: list[str], kind: str) -> None:
        """Refuse ids equal to an earlier one but for case: FHIR servers match identifier values without case."""
        for i, item in enumerate(ids):
            twin = same_but_case(item, ids[:i])
            if twin is not None:
                self.issues.append(
                    Issue(
                        f"{path}[{i}].id",
                        f"{kind} {item!r} differs from {twin!r} only in case, which FHIR identifier searches do "
                        "not tell apart",
                        code="duplicate",
                    )
                )


def door_issues(plan: Plan) -> list[Issue]:
    """Return where a whole plan breaks a rule its team events are held to; [] when it keeps them all."""
    door = _Door()
    door.check("id", plan.id, PlanCreatedDataSchema, "plan_id")
    door.check("patient.mrn", plan.patient.mrn, PatientSchema, "mrn")
    door.check("patient.mrn_system", plan.patient.mrn_system, IdentifierSchema, "system")  # searched as MRN's
    door.check("patient.display_name", plan.patient.display_name, PatientSchema, "display_name")
    door.check("title", plan.title, PlanCreatedDataSchema, "title")
    door.check("what_matters", plan.what_matters, PlanCreatedDataSchema, "what_matters")
    door.check("goal_setting_note", plan.goal_setting_note, GoalSettingDeclinedDataSchema, "note")
    _review_every(door, plan.review_every)
    door.check_list("categories", plan.categories, PlanCreatedDataSchema, "categories")
    for i, category in enumerate(plan.categories):
        door.concept(f"categories[{i}]", category)
    for i, note in enumerate(plan.notes):
        door.note(f"notes[{i}]", note)
    for i, member in enumerate(plan.team):
        _member(door, f"team[{i}]", member)
    for i, goal in enumerate(plan.goals):
        _goal(door, f"goals[{i}]", goal)
    door.twins("goals", [g.id for g in plan.goals], "goal id")
    for i, step in enumerate(plan.steps):
        _step(door, f"steps[{i}]", step)
    return door.issues


def _review_every(door: _Door, every: Quantity | None) -> None:
    if every is None:
        return
    if isinstance(every.value, Decimal) and every.value.is_finite() and every.value != every.value.to_integral_value():
        door.issues.append(Issue("review_every.value", "a review interval is a whole number", code="value"))
    door.check("review_every.value", every.value, DurationSchema, "value")
    door.check("review_every.unit", every.unit, DurationSchema, "unit")


def _member(door: _Door, path: str, member: Member) -> None:
    door.check(f"{path}.id", member.id, MemberJoinedDataSchema, "member_id")
    door.check(f"{path}.name", member.name, MemberJoinedDataSchema, "name")
    if member.identifier is not None:
        door.check(f"{path}.identifier.system", member.identifier.system, IdentifierSchema, "system")
        door.check(f"{path}.identifier.value", member.identifier.value, IdentifierSchema, "value")


def _goal(door: _Door, path: str, goal: Goal) -> None:
    door.check(f"{path}.id", goal.id, GoalFieldsSchema, "id")
    door.concept(f"{path}.description", goal.description, (GoalFieldsSchema, "description"))
    door.check(f"{path}.status_reason", goal.status_reason, GoalStatusChangedDataSchema, "reason")
    door.check_list(f"{path}.targets", goal.targets, GoalFieldsSchema, "targets")
    for i, target in enumerate(goal.targets):
        _target(door, f"{path}.targets[{i}]", target)
    door.check_list(f"{path}.barriers", goal.barriers, GoalFieldsSchema, "barriers")
    door.check_list(f"{path}.contingencies", goal.contingencies, GoalFieldsSchema, "contingencies")
    for i, contingency in enumerate(goal.contingencies):
        door.check(f"{path}.contingencies[{i}].if", contingency.if_, ContingencySchema, "if_")
        door.check(f"{path}.contingencies[{i}].then", contingency.then, ContingencySchema, "then")
    levels = _field(GoalFieldsSchema, "gas_levels")
    assert isinstance(levels, Dict) and levels.value_field is not None
    for level, text in goal.gas_levels.items():
        door.issues += [
            Issue(f"{path}.gas_levels.{level}", m, code="value") for m in _messages(levels.value_field, text)
        ]
    door.check(f"{path}.gas_weight", goal.gas_weight, GoalFieldsSchema, "gas_weight")
    for i, note in enumerate(goal.notes):
        door.note(f"{path}.notes[{i}]", note)
    for i, check_in in enumerate(goal.check_ins):
        _check_in(door, f"{path}.check_ins[{i}]", check_in)
    for i, rating in enumerate(goal.ratings):
        _rating(door, f"{path}.ratings[{i}]", rating)
    # a goal's check-ins and ratings are all Observations identified by the goal and their id
    observations = [(f"{path}.check_ins[{i}]", c.id) for i, c in enumerate(goal.check_ins)]
    observations += [(f"{path}.ratings[{i}]", r.id) for i, r in enumerate(goal.ratings)]
    _observation_twins(door, observations, goal.id)


def _observation_twins(door: _Door, observations: list[tuple[str, str]], goal_id: str) -> None:
    for i, (path, item) in enumerate(observations):
        twin = same_but_case(item, (other for _, other in observations[:i]))
        if twin is not None:
            door.issues.append(
                Issue(
                    f"{path}.id",
                    f"id {item!r} differs from {twin!r} (a check-in or rating of goal {goal_id}) only in case, "
                    "which FHIR identifier searches do not tell apart",
                    code="duplicate",
                )
            )


def _target(door: _Door, path: str, target: Target) -> None:
    door.concept(f"{path}.measure", target.measure)
    door.quantity(f"{path}.quantity", target.quantity, TargetSchema)
    door.check(f"{path}.text", target.text, TargetSchema, "text")


def _check_in(door: _Door, path: str, check_in: CheckIn) -> None:
    door.check(f"{path}.id", check_in.id, CheckinRecordedDataSchema, "checkin_id")
    door.concept(f"{path}.measure", check_in.measure)
    door.quantity(f"{path}.quantity", check_in.quantity, CheckinRecordedDataSchema)
    door.concept(f"{path}.rating", check_in.rating)
    door.check(f"{path}.integer", check_in.integer, CheckinRecordedDataSchema, "integer")
    door.check(f"{path}.text", check_in.text, CheckinRecordedDataSchema, "text")
    door.check(f"{path}.note", check_in.note, CheckinRecordedDataSchema, "note")
    door.check(f"{path}.recorded_by", check_in.recorded_by, CheckinRecordedDataSchema, "recorded_by")


def _rating(door: _Door, path: str, rating: OutcomeRating) -> None:
    door.check(f"{path}.id", rating.id, OutcomeRecordedDataSchema, "rating_id")
    door.check(f"{path}.note", rating.note, OutcomeRecordedDataSchema, "note")


def _step(door: _Door, path: str, step: Step) -> None:
    door.check(f"{path}.id", step.id, StepAddedDataSchema, "step_id")
    door.check(f"{path}.title", step.title, StepAddedDataSchema, "title")
    door.check(f"{path}.description", step.description, StepAddedDataSchema, "description")
    door.check(f"{path}.schedule", step.schedule, StepAddedDataSchema, "schedule")
    door.check_list(f"{path}.goal_ids", step.goal_ids, StepAddedDataSchema, "goal_ids")
    for i, note in enumerate(step.progress):
        door.note(f"{path}.progress[{i}]", note)
