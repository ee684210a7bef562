"""The backstop behind the event schemas: a changed plan is accepted only if it maps to valid FHIR.

The push sends the whole plan as one transaction Bundle and refuses one that `validate_bundle`
refuses, for ever (the plan is re-sent unchanged on every retry). So before an event is accepted,
the plan it makes is mapped with the push's own `plan_to_bundle` and checked with `validate_bundle`.

Mapping and checking a whole plan grows with its check-ins (one Observation each: a plan of 20 goals
and 1,000 check-ins costs ~100 ms), and an event adds at most one. So the plan is checked without the
check-ins the event left as they were (that plan: ~11 ms; a new one-goal plan: ~0.3 ms). Every other
resource (Patient, people, CareTeam, Goals, CarePlan) is checked whole, with exactly the content the
push sends, and a check-in's Observation depends only on the check-in (its references are generated,
never text an event gave), so an untouched one is as valid as when it was accepted.

The same holds for a Goal the event left as it was, as long as nothing it is mapped from changed either:
its Goal resource is made from the goal, the plan's id, the references of the patient, the team and the
goals (and which goals replace which), so when the rest of the plan (patient, team, steps, everything but
the goals and planbridge's bookkeeping) and every goal's id and `replaces` are as they were, an unchanged
goal maps to the very resource that was checked when it was accepted. The whole plan is still mapped (a
mapping error anywhere refuses the event); only those Goal entries are left out of the validation. A
change to the patient or the team, or a goal added, removed or replacing another, checks every goal.
A refusal is always worked out on the whole plan, so it names every problem as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mappings import codes
from mappings.bundle import plan_to_bundle
from mappings.fhir import validate_bundle
from mappings.validate import unresolved_placeholders
from service.domain.errors import InvalidInput, MappingError
from service.domain.model import CheckIn, OutcomeRating, Plan


class Undeliverable(InvalidInput):
    """The plan an event would make cannot be sent to FHIR: the event is refused with 400."""


def _touched_only(before: Plan | None, after: Plan) -> Plan:
    """Return `after` keeping, of its check-ins and outcome ratings, only those new or changed since `before`
    (a rating's Observation, like a check-in's, depends only on the rating)."""
    if before is None:
        return after
    old: dict[tuple[str, str], CheckIn] = {(g.id, c.id): c for g in before.goals for c in g.check_ins}
    rated: dict[tuple[str, str], OutcomeRating] = {(g.id, r.id): r for g in before.goals for r in g.ratings}
    goals = []
    for goal in after.goals:
        kept = [c for c in goal.check_ins if old.get((goal.id, c.id)) != c]
        new_ratings = [r for r in goal.ratings if rated.get((goal.id, r.id)) != r]
        if len(kept) == len(goal.check_ins) and len(new_ratings) == len(goal.ratings):
            goals.append(goal)
        else:
            goals.append(dataclasses.replace(goal, check_ins=kept, ratings=new_ratings))
    return dataclasses.replace(after, goals=goals)


def _untouched_goals(before: Plan | None, after: Plan) -> set[str]:
    """Return the ids of the goals whose Goal resource is the one checked when `before` was accepted:
    the goal is unchanged and so is everything else its resource is mapped from (see the module doc)."""
    if before is None or len(before.goals) != len(after.goals):
        return set()
    if [(g.id, g.replaces) for g in before.goals] != [(g.id, g.replaces) for g in after.goals]:
        return set()
    if _context(before) != _context(after):
        return set()
    return {old.id for old, new in zip(before.goals, after.goals, strict=True) if old == new}


def _context(plan: Plan) -> Plan:
    """The plan without its goals and planbridge's bookkeeping (version, updated_at)."""
    return dataclasses.replace(plan, goals=[], version=0, updated_at=None)


def _without_goals(bundle: dict[str, Any], plan_id: str, goal_ids: set[str], identifier_base: str) -> dict[str, Any]:
    """Return the Bundle without the Goal entries of these goals (found by planbridge's identifier)."""
    system = codes.identifier_system(identifier_base, "goal")
    skip = {codes.goal_identifier_value(plan_id, g) for g in goal_ids}

    def ours(entry: dict[str, Any]) -> bool:
        resource = entry.get("resource") or {}
        return resource.get("resourceType") == "Goal" and any(
            i.get("system") == system and i.get("value") in skip for i in resource.get("identifier", [])
        )

    return {**bundle, "entry": [e for e in bundle.get("entry", []) if not ours(e)]}


def _element_path(bundle: dict[str, Any], path: str, identifier_base: str) -> str:
    """Turn `Bundle.entry[3].resource.description.text` into `Goal(plan-1/goal-walk).description.text`.

    A resource is named by planbridge's own identifier (ids only: never an MRN or a name)."""
    if not path.startswith("Bundle.entry["):
        return path
    index, _, rest = path[len("Bundle.entry[") :].partition("]")
    entries = bundle.get("entry") or []
    if not index.isdecimal() or int(index) >= len(entries):
        return path
    resource = entries[int(index)].get("resource") or {}
    kind = resource.get("resourceType", "Resource")
    ours = [i["value"] for i in resource.get("identifier", []) if i.get("system", "").startswith(identifier_base)]
    return f"{kind}({ours[0]}){rest.removeprefix('.resource')}" if ours else f"{kind}{rest.removeprefix('.resource')}"


def _named(error: MappingError, bundle: dict[str, Any], identifier_base: str) -> dict[str, str]:
    found = error.data.get("errors") or {"": error.detail}
    return {_element_path(bundle, str(p), identifier_base): str(m) for p, m in dict(found).items()}


def _refusal(
    plan: Plan, error: MappingError | None, bundle: dict[str, Any], identifier_base: str, named: dict[str, str]
) -> Undeliverable:
    """The refusal naming each problem: `named` (already named), then those of `error` in `bundle`."""
    errors = {**named, **(_named(error, bundle, identifier_base) if error is not None else {})}
    path = next(iter(errors))
    return Undeliverable(
        f"plan {plan.id} would not be valid FHIR at {path}, so it could never be sent", {"fhir": errors}
    )


def check_deliverable(before: Plan | None, after: Plan, identifier_base: str, mrn_system: str) -> None:
    """Raise Undeliverable, naming each bad FHIR element, if the push could never send `after`.

    A plan that was already undeliverable before the event, in the same way (content pulled from an
    EHR, or accepted before this check existed), does not make every later event a refusal: the
    event did not add the problem, and refusing it would only stop the team from working on the plan.
    """
    untouched = _untouched_goals(before, after)
    try:
        _check(after, before, identifier_base, mrn_system, untouched)
        return
    except Undeliverable as found:
        refusal = found
    if untouched:  # the refusal names every problem of the plan, as checking it whole does
        try:
            _check(after, before, identifier_base, mrn_system)
        except Undeliverable as whole:
            refusal = whole
    if before is None:
        raise refusal
    try:
        _check(before, None, identifier_base, mrn_system)
    except Undeliverable as earlier:
        if earlier.errors.get("fhir") == refusal.errors.get("fhir"):
            return
    raise refusal


def _check(
    after: Plan, before: Plan | None, identifier_base: str, mrn_system: str, untouched: set[str] | None = None
) -> None:
    try:
        bundle = plan_to_bundle(_touched_only(before, after), identifier_base, mrn_system)
    except MappingError as exc:
        raise _refusal(after, exc, {}, identifier_base, {}) from None
    # before any Goal is left out: the references to a goal left out would dangle, and legitimately
    dangling = unresolved_placeholders(bundle)
    named = {_element_path(bundle, p, identifier_base): m for p, m in dangling.items()} if dangling else {}
    if untouched:
        bundle = _without_goals(bundle, after.id, untouched, identifier_base)
    try:
        validate_bundle(bundle)
    except MappingError as exc:
        raise _refusal(after, exc, bundle, identifier_base, named) from None
    if named:
        raise _refusal(after, None, bundle, identifier_base, named)
