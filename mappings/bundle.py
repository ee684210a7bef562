"""A whole plan <-> one FHIR transaction Bundle (https://hl7.org/fhir/R4/http.html#transaction).

Every entry is conditional on an identifier, so sending the same Bundle twice changes nothing:
people are created only when absent (`ifNoneExist`), the rest is a conditional update
(`PUT Type?identifier=...`). References inside use stable `urn:uuid`s derived from identifiers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from mappings import codes
from mappings import datatypes as dt
from mappings.careplan import CAREPLAN_EXTENSIONS, CAREPLAN_KEYS, careplan_to_fhir, read_plan_extensions, step_from_fhir
from mappings.careteam import careteam_from_fhir, careteam_to_fhir, person_resource
from mappings.checkin import checkin_to_fhir
from mappings.datatypes import Json
from mappings.goal import goal_fits, goal_from_fhir, goal_to_fhir
from mappings.notes import note_from_fhir, note_is_modelled
from mappings.refs import Refs, Resolver, member_identifier, refs_for_bundle, urn_for
from service.domain.errors import MappingError
from service.domain.model import Goal, Patient, Plan


def _condition(system: str, value: str) -> str:
    return f"identifier={quote(system, safe=':/')}|{quote(value, safe='/')}"


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
    if any(m.in_team for m in plan.team):
        out.append(
            (refs.careteam or "", careteam_to_fhir(plan, refs), codes.identifier_system(base, "careteam"), plan.id)
        )
    for i, goal in enumerate(plan.goals):
        value = codes.goal_identifier_value(plan.id, goal.id)
        resource = goal_to_fhir(goal, plan.id, refs, f"goals[{i}]", replaced_by.get(goal.id))
        out.append((refs.goals[goal.id], resource, codes.identifier_system(base, "goal"), value))
        for j, check_in in enumerate(goal.check_ins):
            observation = checkin_to_fhir(check_in, goal.id, plan.id, refs, f"goals[{i}].check_ins[{j}]")
            out.append(
                (
                    refs.check_ins[f"{goal.id}/{check_in.id}"],
                    observation,
                    codes.identifier_system(base, "checkin"),
                    codes.scoped_value(plan.id, goal.id, check_in.id),
                )
            )
    out.append((refs.careplan or "", careplan_to_fhir(plan, refs), codes.identifier_system(base, "plan"), plan.id))
    return out


def plan_to_bundle(plan: Plan, identifier_base: str, mrn_system: str, patient_ref: str | None = None) -> Json:
    """Return the plan as one transaction Bundle.

    With `patient_ref` (e.g. "Patient/12", found beforehand) the Bundle points at that Patient;
    without, it carries a conditional create of the Patient by MRN.
    """
    entries: list[Json] = []
    if patient_ref is None:
        patient_ref = urn_for(mrn_system, plan.patient.mrn)
        patient = {"resourceType": "Patient", "identifier": [{"system": mrn_system, "value": plan.patient.mrn}]}
        entries.append(_create(patient_ref, patient, mrn_system, plan.patient.mrn))
    refs = refs_for_bundle(plan, identifier_base, patient_ref)
    for member in plan.team:
        if member.kind != "patient" and not member.fhir_reference:
            system, value = member_identifier(plan.id, member, identifier_base)
            entries.append(_create(refs.members[member.id], person_resource(plan, member, refs), system, value))
    entries += [_put(url, resource, system, value) for url, resource, system, value in plan_resources(plan, refs)]
    moved = _moved(plan, refs)
    if moved:
        for entry in entries:
            dt.retarget(entry["resource"], moved)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _moved(plan: Plan, refs: Refs) -> dict[str, str]:
    """Map the EHR references of resources this Bundle re-emits to their new fullUrls."""
    moved: dict[str, str] = {}
    sources = [(plan.careplan_extra, refs.careplan), (plan.careteam_extra, refs.careteam)]
    for goal in plan.goals:
        sources.append((goal.fhir_extra, refs.goals[goal.id]))
        sources += [(c.fhir_extra, refs.check_ins[f"{goal.id}/{c.id}"]) for c in goal.check_ins]
    for extra, new in sources:
        if extra.get(dt.SOURCE) and new:
            moved[extra[dt.SOURCE]] = new
    return moved


def index_entries(entries: list[Json]) -> dict[str, Json]:
    """Return the resources of Bundle entries keyed by every way a reference can name them."""
    index: dict[str, Json] = {}
    for entry in entries:
        resource = entry.get("resource")
        if dt.resource_type(resource) is None:
            continue
        if entry.get("fullUrl"):
            index[entry["fullUrl"]] = resource
        if resource.get("id"):
            index[f"{resource['resourceType']}/{resource['id']}"] = resource
            if entry.get("fullUrl", "").endswith(f"/{resource['resourceType']}/{resource['id']}"):
                index[entry["fullUrl"]] = resource
    return index


def _patient(subject: Json, index: dict[str, Json], mrn_system: str) -> Patient:
    resource = index.get(subject.get("reference", ""))
    idents = (resource or {}).get("identifier", []) or ([subject["identifier"]] if "identifier" in subject else [])
    mrn = next((i.get("value") for i in idents if i.get("system") == mrn_system and i.get("value")), None)
    if mrn is None and idents:
        mrn = idents[0].get("value")
    if not mrn:
        raise MappingError("the CarePlan's patient has no MRN in the Bundle", errors={"CarePlan.subject": mrn_system})
    return Patient(mrn=mrn, display_name=subject.get("display"))


def bundle_to_plan(bundle: Json, identifier_base: str, mrn_system: str) -> Plan:
    """Return the plan held by a Bundle (transaction, searchset, collection) around one CarePlan."""
    entries = bundle.get("entry", []) if isinstance(bundle, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise MappingError("not a Bundle with a list of entries", errors={"Bundle.entry": "a list of objects"})
    careplans = [e["resource"] for e in entries if dt.resource_type(e.get("resource")) == "CarePlan"]
    if len(careplans) != 1:
        raise MappingError(
            f"a plan Bundle holds exactly one CarePlan, not {len(careplans)}", errors={"Bundle.entry": "CarePlan"}
        )
    return careplan_from_fhir(careplans[0], index_entries(entries), identifier_base, mrn_system)


def careplan_from_fhir(resource: Json, index: dict[str, Json], base: str, mrn_system: str) -> Plan:
    """Return the plan for a CarePlan, reading its team, goals and check-ins from `index`."""
    subject = resource.get("subject", {})
    resolver = Resolver(index, subject.get("reference"), base)
    ours = codes.identifier_system(base, "plan")
    plan_ids = [i for i in resource.get("identifier", []) if i.get("system") == ours and i.get("value")]
    plan = Plan(
        id=plan_ids[0]["value"] if plan_ids else f"careplan-{resource.get('id', 'new')}",
        patient=_patient(subject, index, mrn_system),
    )
    extra = dt.residual(resource, CAREPLAN_KEYS, CAREPLAN_EXTENSIONS)
    others = [i for i in resource.get("identifier", []) if not (plan_ids and i is plan_ids[0])]
    plan.identifiers = dt.read_identifiers(others, extra)
    _read_team(plan, resource, resolver, extra, base)
    goal_ids = _read_goals(plan, resource, resolver, extra, base)
    _read_fields(plan, resource, resolver, extra)
    _read_activities(plan, resource, resolver, extra, goal_ids)
    plan.team = list(resolver.members.values())
    dt.remember_source(extra, resource, bool(plan_ids))
    plan.careplan_extra = extra
    return plan


def _read_team(plan: Plan, resource: Json, resolver: Resolver, extra: Json, base: str) -> None:
    teams = resource.get("careTeam", [])
    team = resolver.lookup(teams[0].get("reference")) if teams else None
    if team is not None and set(teams[0]) == {"reference"} and team.get("resourceType") == "CareTeam":
        _, plan.careteam_extra = careteam_from_fhir(team, resolver, base)
        teams = teams[1:]
    if teams:
        extra["careTeam"] = teams


def _read_goals(plan: Plan, resource: Json, resolver: Resolver, extra: Json, base: str) -> dict[str, str]:
    goal_ids: dict[str, str] = {}
    unresolved = []
    replacements: list[tuple[Goal, str, Json]] = []
    for ref in resource.get("goal", []):
        goal = resolver.lookup(ref.get("reference"))
        if goal is None or set(ref) != {"reference"} or not goal_fits(goal) or ref["reference"] in goal_ids:
            unresolved.append(ref)  # not in the input, not a Goal the plan can hold, or named twice: kept as it came
            continue
        read = goal_from_fhir(goal, resolver, base, plan.id, fallback_id=f"goal-{len(plan.goals) + 1}")
        if plan.goal(read.goal.id) is not None:
            unresolved.append(ref)  # a second Goal with the same identifier: kept as it came
            continue
        plan.goals.append(read.goal)
        goal_ids[ref["reference"]] = read.goal.id
        replacements += [(read.goal, new_id, ext) for new_id, ext in read.replaced_by]
    for old, new_id, ext in replacements:
        new = plan.goal(new_id)
        if new is not None and new.replaces is None and new is not old:
            new.replaces = old.id
        else:  # replaced by a goal outside the plan, or by one that already replaces another: kept as it came
            old.fhir_extra.setdefault("extension", []).append(ext)
    if unresolved:
        extra["goal"] = unresolved
    return goal_ids


def _read_fields(plan: Plan, resource: Json, resolver: Resolver, extra: Json) -> None:
    plan.status = resource.get("status", "")
    plan.intent = resource.get("intent", "")
    plan.title = resource.get("title")
    categories = resource.get("category", [])
    plan.categories = [dt.concept_from_fhir(c) for c in categories if dt.concept_fits(c)]
    if any(not dt.concept_fits(c) for c in categories):
        extra["category"] = [c for c in categories if not dt.concept_fits(c)]  # kept as they came
    plan.period_start = resource.get("period", {}).get("start")
    plan.period_end = resource.get("period", {}).get("end")
    plan.created_at = resource.get("created")
    if "author" in resource and resolver.is_person(resource["author"]):
        plan.author = resolver.member_for(resource["author"])
    elif "author" in resource:
        extra["author"] = resource["author"]  # a PractitionerRole, Organization, CareTeam...: kept as it came
    contributors = resource.get("contributor", [])
    plan.contributors = [resolver.member_for(c) for c in contributors if resolver.is_person(c)]
    if any(not resolver.is_person(c) for c in contributors):
        extra["contributor"] = [c for c in contributors if not resolver.is_person(c)]
    notes = resource.get("note", [])
    plan.notes = [note_from_fhir(n, resolver) for n in notes if note_is_modelled(n, resolver)]
    if any(not note_is_modelled(n, resolver) for n in notes):
        extra["note"] = [n for n in notes if not note_is_modelled(n, resolver)]  # e.g. by an Organization
    read_plan_extensions(plan, resource, extra)


def _read_activities(plan: Plan, resource: Json, resolver: Resolver, extra: Json, goal_ids: dict[str, str]) -> None:
    kept: list[Any] = []
    for i, activity in enumerate(resource.get("activity", [])):
        if isinstance(activity.get("detail"), dict) and "reference" not in activity:
            plan.steps.append(step_from_fhir(activity, i, resolver, goal_ids))
        else:
            kept.append(activity)  # activity.reference (Task, ServiceRequest...): kept as it came
    if kept:
        extra["activity"] = kept
