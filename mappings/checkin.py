"""Check-in <-> FHIR Observation (https://hl7.org/fhir/R4/observation.html), linked to its goal by
the resource-pertainsToGoal extension and from the goal by Goal.outcomeReference."""

from __future__ import annotations

from mappings import codes
from mappings import datatypes as dt
from mappings.datatypes import Json
from mappings.refs import Refs, Resolver
from service.domain.model import CheckIn

OBSERVATION_KEYS = {
    "resourceType",
    "id",
    "meta",
    "identifier",
    "status",
    "code",
    "subject",
    "effectiveDateTime",
    "valueQuantity",
    "valueCodeableConcept",
    "valueInteger",
    "valueString",
    "performer",
    "note",
}


def checkin_to_fhir(check_in: CheckIn, goal_id: str, plan_id: str, refs: Refs, path: str) -> Json:
    """Return the Observation recording one check-in on a goal."""
    goal = refs.goal(goal_id, path)
    built = dt.prune(
        {
            "resourceType": "Observation",
            # a goal contained in the CarePlan ("#goal") cannot be referenced from another resource
            "extension": [{"url": codes.PERTAINS_TO_GOAL, "valueReference": goal}] if not _contained(goal) else [],
            "identifier": [
                {
                    "system": codes.identifier_system(refs.identifier_base, "checkin"),
                    "value": codes.scoped_value(plan_id, goal_id, check_in.id),
                }
            ],
            "status": check_in.status,
            "code": dt.concept_to_fhir(check_in.measure),
            "subject": refs.subject(),
            "effectiveDateTime": check_in.at or None,  # "" when the Observation had effectivePeriod (kept)
            "valueQuantity": dt.quantity_to_fhir(check_in.quantity) if check_in.quantity else None,
            "valueCodeableConcept": dt.concept_to_fhir(check_in.rating) if check_in.rating else None,
            "valueInteger": check_in.integer,
            "valueString": check_in.text,
            "performer": [refs.member(check_in.recorded_by, f"{path}.recorded_by")] if check_in.recorded_by else [],
            "note": [{"text": check_in.note}] if check_in.note else [],
        }
    )
    return dt.merge(built, check_in.fhir_extra)


def _contained(reference: Json) -> bool:
    return str(reference.get("reference", "")).startswith("#")


def checkin_fits(resource: Json) -> bool:
    """Tell whether a resource can be a check-in: an Observation whose code has text or a coding."""
    return resource.get("resourceType") == "Observation" and dt.concept_says_something(resource.get("code", {}))


def checkin_from_fhir(resource: Json, resolver: Resolver, base: str) -> CheckIn:
    """Return a check-in from an Observation; unmodelled parts are kept."""
    system = codes.identifier_system(base, "checkin")
    ours = [
        i["value"] for i in resource.get("identifier", []) if i.get("system") == system and "/" in i.get("value", "")
    ]
    extra = dt.residual(resource, OBSERVATION_KEYS, {codes.PERTAINS_TO_GOAL})
    others = [i for i in resource.get("identifier", []) if not (i.get("system") == system and i.get("value") in ours)]
    if others:
        extra["identifier"] = others  # the EHR's own identifiers, kept beside ours
    performers = resource.get("performer", [])
    if performers and not resolver.is_person(performers[0]):
        extra["performer"], performers = performers, []  # a PractitionerRole, CareTeam...: kept as it came
    if len(performers) > 1:
        extra["performer"] = performers[1:]
    notes = resource.get("note", [])
    if len(notes) > 1 or (notes and set(notes[0]) != {"text"}):
        extra["note"], notes = notes, []
    dt.remember_source(extra, resource, bool(ours))
    quantity = resource.get("valueQuantity")
    if quantity is not None and not dt.quantity_fits(quantity):
        extra["valueQuantity"], quantity = quantity, None  # kept as it came
    return CheckIn(
        id=ours[0].rsplit("/", 1)[1] if ours else f"obs-{resource.get('id', 'x')}",
        at=resource.get("effectiveDateTime", ""),
        measure=dt.concept_from_fhir(resource.get("code", {})),
        quantity=dt.quantity_from_fhir(quantity) if quantity is not None else None,
        rating=dt.keep_concept(resource, "valueCodeableConcept", extra),
        integer=resource.get("valueInteger"),
        text=resource.get("valueString"),
        note=notes[0]["text"] if notes else None,
        recorded_by=resolver.member_for(performers[0]) if performers else None,
        status=resource.get("status", "final"),
        fhir_extra=extra,
    )
