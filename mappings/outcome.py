"""Outcome rating <-> FHIR Observation (https://hl7.org/fhir/R4/observation.html).

A rating is an Observation with status `final`, a code from planbridge's outcome-scale CodeSystem
(`gbo`: a Goal-Based Outcome score 0-10; `gas`: a Goal Attainment Scaling level -2..+2), the score as
`valueInteger`, `focus` and resource-pertainsToGoal naming the Goal, `performer` the rater, and the
occasion (baseline, session, review, end) in planbridge's outcome-occasion extension. It is named in
the Goal's `outcomeReference` beside the check-ins, and identified like them (`{base}/checkin`,
`{plan id}/{goal id}/{rating id}`), so the sync tracks it as one of the goal's Observations.

Reading tells a rating from a check-in by its code: an Observation is read back as a rating only when
it is exactly what this module writes (the code as written, a score in range, one occasion, one rater,
final); anything else an EHR made of it is read as a check-in, which keeps every element as it came.
"""

from __future__ import annotations

from mappings import codes
from mappings import datatypes as dt
from mappings.datatypes import Json
from mappings.refs import Refs, Resolver
from service.domain.model import OUTCOME_OCCASIONS, SCORE_RANGES, OutcomeRating

RATING_KEYS = {
    "resourceType",
    "id",
    "meta",
    "identifier",
    "status",
    "code",
    "subject",
    "focus",
    "effectiveDateTime",
    "valueInteger",
    "performer",
    "note",
}
RATING_EXTENSIONS = {codes.PERTAINS_TO_GOAL, codes.EXT_OUTCOME_OCCASION}


def scale_code(scale: str) -> Json:
    """Return the Observation.code of a rating on this scale, as planbridge writes it."""
    coding = {"system": codes.OUTCOME_SCALE_SYSTEM, "code": scale, "display": codes.OUTCOME_SCALE_DISPLAY[scale]}
    return {"coding": [coding]}


_CODES = {scale: scale_code(scale) for scale in SCORE_RANGES}


def rating_to_fhir(rating: OutcomeRating, goal_id: str, plan_id: str, refs: Refs, path: str) -> Json:
    """Return the Observation recording one outcome rating of a goal."""
    goal = refs.goal(goal_id, path)
    contained = str(goal.get("reference", "")).startswith("#")  # a contained Goal cannot be referenced from here
    built = dt.prune(
        {
            "resourceType": "Observation",
            "extension": [
                *([] if contained else [{"url": codes.PERTAINS_TO_GOAL, "valueReference": goal}]),
                {"url": codes.EXT_OUTCOME_OCCASION, "valueCode": rating.occasion},
            ],
            "identifier": [
                {
                    "system": codes.identifier_system(refs.identifier_base, "checkin"),
                    "value": codes.scoped_value(plan_id, goal_id, rating.id),
                }
            ],
            "status": "final",
            "code": scale_code(rating.scale),
            "subject": refs.subject(),
            "focus": [] if contained else [goal],
            "effectiveDateTime": rating.at,
            "valueInteger": rating.score,
            "performer": [refs.member(rating.rated_by, f"{path}.rated_by")],
            "note": [{"text": rating.note}] if rating.note else [],
        }
    )
    return dt.merge(built, rating.fhir_extra)


def _ours(resource: Json, base: str) -> list[str]:
    system = codes.identifier_system(base, "checkin")
    return [
        i["value"]
        for i in resource.get("identifier", [])
        if i.get("system") == system and isinstance(i.get("value"), str) and "/" in i["value"]
    ]


def _scale(resource: Json) -> str | None:
    return next((scale for scale, code in _CODES.items() if resource.get("code") == code), None)


def rating_fits(resource: Json, resolver: Resolver, goal: Json, base: str) -> bool:
    """Tell whether an Observation a Goal names is one of its outcome ratings, exactly as planbridge writes one."""
    if resource.get("resourceType") != "Observation" or resource.get("status") != "final":
        return False
    scale = _scale(resource)
    score = resource.get("valueInteger")
    if scale is None or type(score) is not int or not SCORE_RANGES[scale][0] <= score <= SCORE_RANGES[scale][1]:
        return False
    if not isinstance(resource.get("effectiveDateTime"), str) or not resource["effectiveDateTime"]:
        return False
    occasions = dt.extensions(resource, codes.EXT_OUTCOME_OCCASION)
    if len(occasions) != 1 or dt.simple_value(occasions[0], "valueCode") not in OUTCOME_OCCASIONS:
        return False
    performers = resource.get("performer", [])
    if len(performers) != 1 or not isinstance(performers[0], dict) or not resolver.is_person(performers[0]):
        return False
    notes = resource.get("note", [])
    if notes and (len(notes) != 1 or set(notes[0]) != {"text"}):
        return False
    focus = resource.get("focus", [])
    if focus and (len(focus) != 1 or set(focus[0]) != {"reference"} or not _is_goal(focus[0], resolver, goal)):
        return False
    return len(_ours(resource, base)) == 1


def _is_goal(ref: Json, resolver: Resolver, goal: Json) -> bool:
    found = resolver.lookup(ref.get("reference"))
    return found is goal or (found is not None and found == goal)


def rating_from_fhir(resource: Json, resolver: Resolver, base: str) -> OutcomeRating:
    """Return the rating an Observation records (one `rating_fits` accepted); the rest is kept."""
    (value,) = _ours(resource, base)
    system = codes.identifier_system(base, "checkin")
    extra = dt.residual(resource, RATING_KEYS, RATING_EXTENSIONS)
    others = [i for i in resource.get("identifier", []) if not (i.get("system") == system and i.get("value") == value)]
    if others:
        extra["identifier"] = others  # the EHR's own identifiers, kept beside ours
    notes = resource.get("note", [])
    (occasion,) = dt.extensions(resource, codes.EXT_OUTCOME_OCCASION)
    return OutcomeRating(
        id=value.rsplit("/", 1)[1],
        scale=_scale(resource) or "",
        score=resource["valueInteger"],
        occasion=occasion["valueCode"],
        rated_by=resolver.member_for(resource["performer"][0]),
        at=resource["effectiveDateTime"],
        note=notes[0]["text"] if notes else None,
        fhir_extra=extra,
    )
