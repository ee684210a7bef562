"""A plan written as a FHIR transaction Bundle: its resources, their conditional requests and references
(mappings.bundle reads a Bundle back)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from mappings import codes
from mappings import datatypes as dt
from mappings.careplan import (
    careplan_to_fhir,
)
from mappings.careteam import careteam_to_fhir, person_resource, writes_careteam
from mappings.checkin import checkin_to_fhir
from mappings.datatypes import Json
from mappings.goal import goal_to_fhir
from mappings.outcome import rating_to_fhir
from mappings.refs import (
    Refs,
    contained_id,
    member_identifier,
    refs_for_bundle,
    urn_for,
)
from service.domain.errors import MappingError
from service.domain.model import Plan


def _condition(system: str, value: str) -> str:
    return f"identifier={quote(codes.search_escape(system), safe=':/')}|{quote(codes.search_escape(value), safe='/')}"


def _put(full_url: str, resource: Json, system: str, value: str) -> Json:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}?{_condition(system, value)}"},
    }


def _create(full_url: str, resource: Json, system: str, value: str) -> Json:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], "ifNoneExist": _condition(system, value)},
    }


def plan_resources(plan: Plan, refs: Refs) -> list[tuple[str, Json, str, str]]:
    """Return (fullUrl, resource, identifier system, value) for the CareTeam, Goals, Observations and CarePlan."""
    base = refs.identifier_base
    replaced_by: dict[str, list[str]] = {}
    for g in plan.goals:
        if g.replaces:
            replaced_by.setdefault(g.replaces, []).append(g.id)
    out: list[tuple[str, Json, str, str]] = []
    contained: list[Json] = []  # the CareTeam and Goals the EHR sent inside its CarePlan go back inside it
    if writes_careteam(plan):
        team, system = careteam_to_fhir(plan, refs), codes.identifier_system(base, "careteam")
        if contained_id(plan.careteam_extra):
            contained.append(_as_contained(team, contained_id(plan.careteam_extra) or "", system))
        else:
            out.append((refs.careteam or "", team, system, plan.id))
    for i, goal in enumerate(plan.goals):
        value = codes.goal_identifier_value(plan.id, goal.id)
        resource = goal_to_fhir(goal, plan.id, refs, f"goals[{i}]", replaced_by.get(goal.id))
        system = codes.identifier_system(base, "goal")
        if contained_id(goal.fhir_extra):
            contained.append(_as_contained(resource, contained_id(goal.fhir_extra) or "", system))
        else:
            out.append((refs.goals[goal.id], resource, system, value))
        # check-ins, then outcome ratings: each an Observation under the check-in identifier system
        observations: list[tuple[Any, Any, str]] = [
            (check_in, checkin_to_fhir, f"goals[{i}].check_ins[{j}]") for j, check_in in enumerate(goal.check_ins)
        ] + [(rating, rating_to_fhir, f"goals[{i}].ratings[{j}]") for j, rating in enumerate(goal.ratings)]
        for item, to_fhir, path in observations:
            out.append(
                (
                    refs.check_ins[f"{goal.id}/{item.id}"],
                    to_fhir(item, goal.id, plan.id, refs, path),
                    codes.identifier_system(base, "checkin"),
                    codes.scoped_value(plan.id, goal.id, item.id),
                )
            )
    careplan = careplan_to_fhir(plan, refs, contained)
    out.append((refs.careplan or "", careplan, codes.identifier_system(base, "plan"), plan.id))
    return out


def _as_contained(resource: Json, element_id: str, ours: str) -> Json:
    """Return a resource as it goes inside `CarePlan.contained`: its element id, no identifier of planbridge's."""
    rest = {k: v for k, v in resource.items() if k not in ("resourceType", "id")}
    kept = [i for i in rest.pop("identifier", []) if i.get("system") != ours]
    if kept:
        rest["identifier"] = kept
    return {"resourceType": resource["resourceType"], "id": element_id, **rest}


def plan_to_bundle(plan: Plan, identifier_base: str, mrn_system: str, patient_ref: str | None = None) -> Json:
    """Return the plan as one transaction Bundle.

    With `patient_ref` (e.g. "Patient/12", found beforehand) the Bundle points at that Patient;
    without, it carries a conditional create of the Patient by MRN, under the plan's `mrn_system`
    (default `mrn_system`). A plan holding the EHR's reference to its Patient (`patient.fhir_reference`)
    uses that reference as it is, and the Bundle never carries the Patient.
    """
    entries: list[Json] = []
    if plan.patient.fhir_reference:
        patient_ref = plan.patient.fhir_reference  # the EHR's own reference, used as it came
    elif patient_ref is None:
        system, mrn = plan.patient.mrn_system or mrn_system, plan.patient.mrn
        if not mrn:
            raise MappingError(
                "the plan's patient has neither an MRN nor a FHIR reference", errors={"patient.mrn": "required"}
            )
        patient_ref = urn_for(system, mrn)
        patient = {"resourceType": "Patient", "identifier": [{"system": system, "value": mrn}]}
        entries.append(_create(patient_ref, patient, system, mrn))
    refs = refs_for_bundle(plan, identifier_base, patient_ref)
    for member in plan.team:
        if member.kind != "patient" and not member.fhir_reference:
            if any(e["fullUrl"] == refs.members[member.id] for e in entries):
                continue  # two members with one identifier are one person on the server: created once
            system, value = member_identifier(plan.id, member, identifier_base)
            entries.append(_create(refs.members[member.id], person_resource(plan, member, refs), system, value))
    entries += [_put(url, resource, system, value) for url, resource, system, value in plan_resources(plan, refs)]
    moved = _moved(plan, refs)
    if moved:
        for entry in entries:
            entry["resource"] = dt.retarget(entry["resource"], moved)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _moved(plan: Plan, refs: Refs) -> dict[str, str]:
    """Map the EHR references of resources this Bundle re-emits to their new fullUrls."""
    moved: dict[str, str] = {}
    sources = [(plan.careplan_extra, refs.careplan), (plan.careteam_extra, refs.careteam)]
    for goal in plan.goals:
        sources.append((goal.fhir_extra, refs.goals[goal.id]))
        sources += [(c.fhir_extra, refs.check_ins[f"{goal.id}/{c.id}"]) for c in [*goal.check_ins, *goal.ratings]]
    for extra, new in sources:
        if extra.get(dt.SOURCE) and new:
            moved[extra[dt.SOURCE]] = new
    return moved
