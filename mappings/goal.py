"""Goal <-> FHIR R4 Goal (https://hl7.org/fhir/R4/goal.html), with goal-acceptance per member and
goal-relationship for revisions; check-ins and outcome ratings are Observations named in
Goal.outcomeReference; barriers, GAS level descriptions and weight, and contingency plans are
planbridge extensions (docs/mapping.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mappings import codes
from mappings import datatypes as dt
from mappings.checkin import checkin_fits, checkin_from_fhir
from mappings.datatypes import Json
from mappings.notes import note_from_fhir, note_is_modelled, note_to_fhir
from mappings.outcome import rating_fits, rating_from_fhir
from mappings.refs import Refs, Resolver
from service.domain.errors import MappingError
from service.domain.model import GAS_LEVELS, Agreement, CheckIn, Contingency, Goal, OutcomeRating, Target
from service.domain.rules import check_target

GOAL_KEYS = {
    "resourceType",
    "id",
    "meta",
    "identifier",
    "lifecycleStatus",
    "achievementStatus",
    "category",
    "priority",
    "description",
    "subject",
    "startDate",
    "target",
    "statusDate",
    "statusReason",
    "expressedBy",
    "addresses",
    "note",
    "outcomeReference",
}
GOAL_EXTENSIONS = {
    codes.GOAL_ACCEPTANCE,
    codes.GOAL_RELATIONSHIP,
    codes.EXT_BARRIER,
    codes.EXT_GAS_LEVEL,
    codes.EXT_GAS_WEIGHT,
    codes.EXT_CONTINGENCY,
}
GAS_LEVEL_PARTS = {"level": "valueInteger", "description": "valueString"}
CONTINGENCY_PARTS = {"if": "valueString", "then": "valueString", "owner": "valueReference"}
ACCEPTANCE_PARTS = {"individual": "valueReference", "status": "valueCode", "priority": "valueCodeableConcept"}
RELATIONSHIP_PARTS = {"type": "valueCodeableConcept", "target": "valueReference"}
REPLACEMENT = {"coding": [{"system": codes.GOAL_RELATIONSHIP_TYPE_SYSTEM, "code": "replacement"}]}
TARGET_KEYS = {
    "measure",
    "detailQuantity",
    "detailRange",
    "detailRatio",
    "detailCodeableConcept",
    "detailString",
    "detailBoolean",
    "detailInteger",
    "dueDate",
    "dueDuration",
}


def target_to_fhir(target: Target, path: str) -> Json:
    """Return a Goal.target element; gol-1 and one-detail-only are checked first."""
    problems = check_target(target, path)
    if problems:
        raise MappingError(problems[0].message, errors={p.path: p.message for p in problems})
    built = dt.prune(
        {
            "measure": dt.concept_to_fhir(target.measure) if target.measure else None,
            "detailQuantity": dt.quantity_to_fhir(target.quantity) if target.quantity else None,
            "detailRange": dt.range_to_fhir(target.range) if target.range else None,
            "detailRatio": dt.ratio_to_fhir(target.ratio) if target.ratio else None,
            "detailCodeableConcept": dt.concept_to_fhir(target.concept) if target.concept else None,
            "detailString": target.text,
            "detailBoolean": target.boolean,
            "detailInteger": target.integer,
            "dueDate": target.due_date,
            "dueDuration": dt.quantity_to_fhir(target.due_duration) if target.due_duration else None,
        }
    )
    return dt.merge(built, target.fhir_extra)


def target_from_fhir(data: Json) -> Target:
    """Return a target from any Goal.target element, whatever its detail[x] and due[x]."""
    return Target(
        measure=dt.concept_from_fhir(data["measure"]) if "measure" in data else None,
        quantity=dt.quantity_from_fhir(data["detailQuantity"]) if "detailQuantity" in data else None,
        range=dt.range_from_fhir(data["detailRange"]) if "detailRange" in data else None,
        ratio=dt.ratio_from_fhir(data["detailRatio"]) if "detailRatio" in data else None,
        concept=dt.concept_from_fhir(data["detailCodeableConcept"]) if "detailCodeableConcept" in data else None,
        text=data.get("detailString"),
        boolean=data.get("detailBoolean"),
        integer=data.get("detailInteger"),
        due_date=data.get("dueDate"),
        due_duration=dt.quantity_from_fhir(data["dueDuration"]) if "dueDuration" in data else None,
        fhir_extra=dt.residual(data, TARGET_KEYS, set()),
    )


def target_fits(data: Json) -> bool:
    """Tell whether a Goal.target's parts are all datatypes the model holds (else the target is kept as it came)."""
    for key, fits in _TARGET_FITS.items():
        if key in data and not fits(data[key]):
            return False
    return True


_TARGET_FITS = {
    "measure": dt.concept_fits,
    "detailQuantity": dt.quantity_fits,
    "detailRange": dt.range_fits,
    "detailRatio": dt.ratio_fits,
    "detailCodeableConcept": dt.concept_fits,
    "dueDuration": dt.quantity_fits,
}


def _acceptance(agreement: Agreement, refs: Refs, path: str) -> Json:
    parts = [{"url": "individual", "valueReference": refs.member(agreement.member_id, f"{path}.member_id")}]
    if agreement.status:
        parts.append({"url": "status", "valueCode": agreement.status})
    if agreement.priority:
        parts.append({"url": "priority", "valueCodeableConcept": dt.concept_to_fhir(agreement.priority)})
    return {"url": codes.GOAL_ACCEPTANCE, "extension": parts}


def _extensions(goal: Goal, refs: Refs, path: str, replaced_by: list[str]) -> list[Json]:
    out = [_acceptance(a, refs, f"{path}.agreements[{i}]") for i, a in enumerate(goal.agreements)]
    # "replacement: this goal has been replaced by the target goal", so the link sits on the old goal.
    out += [
        {
            "url": codes.GOAL_RELATIONSHIP,
            "extension": [
                {
                    "url": "type",
                    "valueCodeableConcept": {
                        "coding": [{"system": codes.GOAL_RELATIONSHIP_TYPE_SYSTEM, "code": "replacement"}]
                    },
                },
                {"url": "target", "valueReference": refs.goal(new_id, f"{path}.replaced_by")},
            ],
        }
        for new_id in replaced_by
    ]
    out += [{"url": codes.EXT_BARRIER, "valueString": b} for b in goal.barriers]
    out += [
        {
            "url": codes.EXT_GAS_LEVEL,
            "extension": [
                {"url": "level", "valueInteger": int(level)},
                {"url": "description", "valueString": goal.gas_levels[level]},
            ],
        }
        for level in GAS_LEVELS
        if level in goal.gas_levels
    ]
    if goal.gas_weight is not None:
        out.append({"url": codes.EXT_GAS_WEIGHT, "valueDecimal": goal.gas_weight})
    out += [_contingency(c, refs, f"{path}.contingencies[{i}]") for i, c in enumerate(goal.contingencies)]
    return out


def _contingency(contingency: Contingency, refs: Refs, path: str) -> Json:
    parts = [{"url": "if", "valueString": contingency.if_}, {"url": "then", "valueString": contingency.then}]
    if contingency.owner is not None:
        parts.append({"url": "owner", "valueReference": refs.member(contingency.owner, f"{path}.owner")})
    return {"url": codes.EXT_CONTINGENCY, "extension": parts}


def goal_to_fhir(
    goal: Goal, plan_id: str, refs: Refs, path: str = "goal", replaced_by: list[str] | None = None
) -> Json:
    """Return the FHIR Goal for one of a plan's goals; `replaced_by` names the goals that revise it."""
    ours = {
        "system": codes.identifier_system(refs.identifier_base, "goal"),
        "value": codes.goal_identifier_value(plan_id, goal.id),
    }
    built = dt.prune(
        {
            "resourceType": "Goal",
            "extension": _extensions(goal, refs, path, replaced_by or []),
            "identifier": [*(dt.identifier_to_fhir(i) for i in goal.identifiers), ours],
            "lifecycleStatus": goal.lifecycle_status,
            "achievementStatus": dt.concept_to_fhir(goal.achievement) if goal.achievement else None,
            "category": [dt.concept_to_fhir(c) for c in goal.categories],
            "priority": dt.concept_to_fhir(goal.priority) if goal.priority else None,
            "description": dt.concept_to_fhir(goal.description),
            "subject": refs.subject(),
            "startDate": goal.start_date,
            "target": [target_to_fhir(t, f"{path}.targets[{i}]") for i, t in enumerate(goal.targets)],
            "statusDate": goal.status_date,
            "statusReason": goal.status_reason,
            "expressedBy": refs.member(goal.proposed_by, f"{path}.proposed_by") if goal.proposed_by else None,
            "addresses": [dt.ref_to_fhir(r) for r in goal.addresses],
            "note": [note_to_fhir(n, refs, f"{path}.notes[{i}]") for i, n in enumerate(goal.notes)],
            "outcomeReference": [
                {"reference": refs.check_ins[f"{goal.id}/{c.id}"]} for c in [*goal.check_ins, *goal.ratings]
            ],
        }
    )
    return dt.merge(built, goal.fhir_extra)


def _ours(resource: Json, base: str, plan_id: str | None = None) -> Json | None:
    """Return planbridge's identifier of a Goal ("{plan id}/{goal id}"), if it has one: of the plan `plan_id`
    when one is named. A Goal two EHR CarePlans share carries the identifier of each adopted plan that wrote
    it; another plan's is one of the EHR's identifiers to this plan, kept as it came."""
    system = codes.identifier_system(base, "goal")
    found = [i for i in resource.get("identifier", []) if i.get("system") == system and "/" in i.get("value", "")]
    if plan_id is not None:
        found = [i for i in found if i["value"].rsplit("/", 1)[0] == plan_id]
    return found[0] if found else None


def _goal_id(resource: Json, plan_id: str | None, base: str, fallback: str | None = None) -> tuple[str | None, str]:
    system = codes.identifier_system(base, "goal")
    ours = _ours(resource, base, plan_id)
    if ours is not None:
        found_plan, goal_id = ours["value"].rsplit("/", 1)
        return found_plan, goal_id
    if resource.get("id"):
        return plan_id, f"goal-{resource['id']}"
    if fallback:
        return plan_id, fallback
    raise MappingError("a Goal needs planbridge's identifier or a server id", errors={"Goal.identifier": system})


@dataclass
class GoalRead:
    """A Goal read from FHIR: the plan its identifier names (if any), the goal, and the goals replacing it."""

    plan_id: str | None
    goal: Goal
    replaced_by: list[tuple[str, Json]] = field(default_factory=list)  # (new goal id, its goal-relationship)


def goal_fits(resource: Json) -> bool:
    """Tell whether a resource can be one of a plan's goals: a Goal whose description has text or a coding."""
    return resource.get("resourceType") == "Goal" and dt.concept_says_something(resource.get("description", {}))


def goal_from_fhir(
    resource: Json, resolver: Resolver, base: str, plan_id: str | None = None, fallback_id: str | None = None
) -> GoalRead:
    """Read any R4 Goal; what the model does not hold is kept in `fhir_extra` to write back."""
    if resource.get("resourceType") != "Goal":
        raise MappingError("not a Goal", errors={"resourceType": resource.get("resourceType")})
    found_plan, goal_id = _goal_id(resource, plan_id, base, fallback_id)
    ours = _ours(resource, base, plan_id)
    others = [i for i in resource.get("identifier", []) if i is not ours]
    extra = dt.residual(resource, GOAL_KEYS, GOAL_EXTENSIONS)
    targets = resource.get("target", [])
    categories = resource.get("category", [])
    goal = Goal(
        id=goal_id,
        description=dt.concept_from_fhir(resource.get("description", {})),
        lifecycle_status=resource.get("lifecycleStatus", ""),
        categories=[dt.concept_from_fhir(c) for c in categories if dt.concept_fits(c)],
        priority=dt.keep_concept(resource, "priority", extra),
        achievement=dt.keep_concept(resource, "achievementStatus", extra),
        status_date=resource.get("statusDate"),
        status_reason=resource.get("statusReason"),
        proposed_by=resolver.member_for(resource["expressedBy"])
        if _person(resource, "expressedBy", resolver)
        else None,
        start_date=resource.get("startDate"),
        targets=[target_from_fhir(t) for t in targets if target_fits(t)],
        addresses=[dt.ref_from_fhir(r) for r in resource.get("addresses", []) if dt.ref_fits(r)],
        notes=[note_from_fhir(n, resolver) for n in resource.get("note", []) if note_is_modelled(n, resolver)],
    )
    if any(not target_fits(t) for t in targets):
        extra["target"] = [t for t in targets if not target_fits(t)]  # kept as they came, after the others
    if any(not dt.concept_fits(c) for c in categories):
        extra["category"] = [c for c in categories if not dt.concept_fits(c)]
    goal.identifiers = dt.read_identifiers(others, extra)
    if any(not dt.ref_fits(r) for r in resource.get("addresses", [])):
        extra["addresses"] = [r for r in resource.get("addresses", []) if not dt.ref_fits(r)]  # kept as it came
    if "expressedBy" in resource and goal.proposed_by is None:
        extra["expressedBy"] = resource["expressedBy"]  # a PractitionerRole, say: kept as it came
    other_notes = [n for n in resource.get("note", []) if not note_is_modelled(n, resolver)]
    if other_notes:
        extra["note"] = other_notes
    read = GoalRead(found_plan, goal)
    _read_extensions(read, resource, resolver, extra, base)
    _read_outcomes(goal, resource, resolver, extra, base)
    dt.remember_source(extra, resource, ours is not None)
    goal.fhir_extra = extra
    return read


def _person(resource: Json, key: str, resolver: Resolver) -> bool:
    return key in resource and resolver.is_person(resource[key])


def _read_extensions(read: GoalRead, resource: Json, resolver: Resolver, extra: Json, base: str) -> None:
    goal = read.goal
    kept = extra.setdefault("extension", [])
    for ext in resource.get("extension", []):
        url = ext.get("url")
        agreement = _agreement(ext, resolver) if url == codes.GOAL_ACCEPTANCE else None
        replacement = _replacement(ext, resolver, base) if url == codes.GOAL_RELATIONSHIP else None
        if agreement is not None:
            goal.agreements.append(agreement)
        elif replacement is not None:
            read.replaced_by.append((replacement, ext))
        elif url == codes.EXT_BARRIER and dt.simple_value(ext, "valueString") is not None:
            goal.barriers.append(ext["valueString"])
        elif url == codes.EXT_GAS_LEVEL and _gas_level(ext, goal) is not None:
            level, description = _gas_level(ext, goal) or ("", "")
            goal.gas_levels[level] = description
        elif url == codes.EXT_GAS_WEIGHT and goal.gas_weight is None and _weight(ext) is not None:
            goal.gas_weight = _weight(ext)
        elif url == codes.EXT_CONTINGENCY and _contingency_from(ext, resolver) is not None:
            goal.contingencies.append(_contingency_from(ext, resolver) or Contingency("", ""))
        elif url in GOAL_EXTENSIONS:
            kept.append(ext)  # a shape we do not read: keep it as it came
    if not kept:
        del extra["extension"]


def _gas_level(ext: Json, goal: Goal) -> tuple[str, str] | None:
    """Return (level, description) of a goal-gas-level extension, None when it does not fit (or repeats a level)."""
    parts = dt.extension_parts(ext, GAS_LEVEL_PARTS)
    if parts is None or set(parts) != set(GAS_LEVEL_PARTS) or type(parts["level"]) is not int:
        return None
    level = str(parts["level"])
    if level not in GAS_LEVELS or level in goal.gas_levels or not isinstance(parts["description"], str):
        return None
    return level, parts["description"]


def _weight(ext: Json) -> float | None:
    value = dt.simple_value(ext, "valueDecimal")
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _contingency_from(ext: Json, resolver: Resolver) -> Contingency | None:
    """Return the contingency a goal-contingency extension records, None when it does not fit the model."""
    parts = dt.extension_parts(ext, CONTINGENCY_PARTS)
    if parts is None or "if" not in parts or "then" not in parts:
        return None
    owner = parts.get("owner")
    if owner is not None and not (isinstance(owner, dict) and resolver.is_person(owner)):
        return None
    return Contingency(parts["if"], parts["then"], resolver.member_for(owner) if owner is not None else None)


def _agreement(ext: Json, resolver: Resolver) -> Agreement | None:
    """Return the agreement a goal-acceptance records, or None when it does not fit the model."""
    parts = dt.extension_parts(ext, ACCEPTANCE_PARTS)
    if parts is None or "individual" not in parts or not resolver.is_person(parts["individual"]):
        return None  # no individual, or an Organization, CareTeam...
    return Agreement(
        member_id=resolver.member_for(parts["individual"]),
        status=parts.get("status"),
        priority=dt.concept_from_fhir(parts["priority"]) if "priority" in parts else None,
    )


def _replacement(ext: Json, resolver: Resolver, base: str) -> str | None:
    """Return the id of the goal a goal-relationship says replaces this one, or None when it does not fit the model."""
    parts = dt.extension_parts(ext, RELATIONSHIP_PARTS)
    if parts is None or parts.get("type") != REPLACEMENT or set(parts.get("target", {})) != {"reference"}:
        return None
    resource = resolver.lookup(parts["target"]["reference"])
    if resource is None or resource.get("resourceType") != "Goal":
        return None  # not in the input, or not a Goal
    try:
        return _goal_id(resource, None, base)[1]
    except MappingError:
        return None  # a Goal with neither our identifier nor an id: the plan cannot name it


def _read_outcomes(goal: Goal, resource: Json, resolver: Resolver, extra: Json, base: str) -> None:
    other = []
    for ref in resource.get("outcomeReference", []):
        observation = resolver.lookup(ref.get("reference"))
        if observation is not None and set(ref) == {"reference"} and rating_fits(observation, resolver, resource, base):
            read: CheckIn | OutcomeRating = rating_from_fhir(observation, resolver, base)
        elif observation is not None and set(ref) == {"reference"} and checkin_fits(observation):
            read = checkin_from_fhir(observation, resolver, base)
        else:
            other.append(ref)
            continue
        if any(c.id == read.id for c in [*goal.check_ins, *goal.ratings]):
            other.append(ref)  # the same Observation named twice (or two with one identifier): kept as it came
        elif isinstance(read, OutcomeRating):
            goal.ratings.append(read)
        else:
            goal.check_ins.append(read)
    if other:
        extra["outcomeReference"] = other
