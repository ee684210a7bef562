"""A whole plan <-> one FHIR transaction Bundle (https://hl7.org/fhir/R4/http.html#transaction).

Every entry is conditional on an identifier, so sending the same Bundle twice changes nothing:
people are created only when absent (`ifNoneExist`), the rest is a conditional update
(`PUT Type?identifier=...`). References inside use stable `urn:uuid`s derived from identifiers.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from mappings import codes
from mappings import datatypes as dt
from mappings.bundle_write import plan_resources, plan_to_bundle
from mappings.careplan import (
    CAREPLAN_EXTENSIONS,
    CAREPLAN_KEYS,
    CONTAINED_ORDER,
    read_plan_extensions,
    step_from_fhir,
)
from mappings.careteam import careteam_from_fhir
from mappings.datatypes import Json
from mappings.goal import goal_fits, goal_from_fhir
from mappings.notes import note_from_fhir, note_is_modelled
from mappings.placeholders import resolve_placeholders
from mappings.reference_parse import parse_reference
from mappings.refs import (
    CONTAINED,
    IMPLIED,
    REFERENCE,
    Resolver,
    contained_id,
)
from service.domain.errors import MappingError
from service.domain.model import Goal, Member, Patient, Plan

__all__ = ["MR_TYPE", "bundle_to_plan", "careplan_from_fhir", "index_entries", "plan_resources", "plan_to_bundle"]


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


MR_TYPE = ("http://terminology.hl7.org/CodeSystem/v2-0203", "MR")


def _mrn_identifier(idents: list[Any], mrn_system: str) -> Json | None:
    """Return the identifier that is the MRN: the one under `mrn_system`, else one typed MR (v2-0203),
    else the first with a value."""
    usable = [i for i in idents if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"]]
    typed = [
        i
        for i in usable
        if any(
            (c.get("system"), c.get("code")) == MR_TYPE
            for c in ((i.get("type") or {}).get("coding") or [])
            if isinstance(c, dict)
        )
    ]
    ours = [i for i in usable if i.get("system") == mrn_system]
    return (ours or typed or usable or [None])[0]


def _literal_type(reference: Any) -> str | None:
    """Return the resource type a literal reference (`Group/1`, `[base]/Patient/2`) names; None for others."""
    parsed = parse_reference(reference)
    return parsed.type if parsed is not None else None  # None too for a urn:uuid or #contained


def _patient(subject: Json, index: dict[str, Json], mrn_system: str, ehr_authored: bool = False) -> Patient:
    """Return the plan's patient: the MRN's system and value as the EHR has them, and the EHR's literal
    reference to the Patient when the plan is the EHR's own (its id is `careplan-{CarePlan.id}`) or the
    input does not carry the Patient's MRN (a Patient referenced but not included)."""
    reference = subject.get("reference")
    resource = index.get(reference or "")
    named = dt.resource_type(resource) or subject.get("type") or _literal_type(reference)
    if named is not None and named != "Patient":  # a Group, or the CarePlan itself: its identifier is no MRN
        raise MappingError("a plan is about one Patient", errors={"CarePlan.subject": f"a {named}, not a Patient"})
    idents = (resource or {}).get("identifier") or ([subject["identifier"]] if "identifier" in subject else [])
    mrn = _mrn_identifier(idents, mrn_system)
    literal = reference if isinstance(reference, str) and not reference.startswith(("urn:", "#")) else None
    if mrn is None and literal is None:
        raise MappingError("the CarePlan's patient has no MRN in the Bundle", errors={"CarePlan.subject": mrn_system})
    system = mrn.get("system") if mrn is not None else None
    return Patient(
        mrn=mrn["value"] if mrn is not None else None,
        display_name=subject.get("display"),
        mrn_system=system if isinstance(system, str) and system and system != mrn_system else None,
        fhir_reference=literal if ehr_authored or resource is None or mrn is None else None,
        fhir_extra={k: v for k, v in subject.items() if k not in ("reference", "display")} or None,
    )


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
    (full_url,) = [e.get("fullUrl") for e in entries if dt.resource_type(e.get("resource")) == "CarePlan"]
    aliases = _fullurl_aliases(entries)
    if aliases:
        entries = dt.retarget(entries, aliases)
        careplans = [e["resource"] for e in entries if dt.resource_type(e.get("resource")) == "CarePlan"]
    index = index_entries(entries)
    plan = careplan_from_fhir(careplans[0], index, identifier_base, mrn_system, _unnamed_id(careplans[0], full_url))
    # a `urn:` reference kept as it came must name an entry of the plan's own Bundle, or need none
    return resolve_placeholders(
        plan, entries, bundle.get("type"), lambda read: _own_full_urls(read, identifier_base, mrn_system)
    )


def _own_full_urls(plan: Plan, identifier_base: str, mrn_system: str) -> set[str]:
    """Return the fullUrls of the Bundle a plan is written as (none when it cannot be written: refused later)."""
    try:
        written = plan_to_bundle(plan, identifier_base, mrn_system)
    except MappingError:
        return set()
    return {e["fullUrl"] for e in written["entry"]}


def _unnamed_id(careplan: Json, full_url: Any) -> str:
    """Return the plan id for a CarePlan with neither planbridge's identifier nor an id (a transaction's
    new CarePlan): its `urn:uuid:` fullUrl's UUID, else a UUID of its content. The same input gives the same
    plan; two CarePlans never share one id (`careplan-new` for all made `plans import` take one for another)."""
    if isinstance(full_url, str) and full_url.lower().startswith("urn:uuid:"):
        return f"careplan-{full_url[9:].lower()}"
    return f"careplan-{uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(careplan, sort_keys=True, ensure_ascii=False))}"


REEMITTED = ("CarePlan", "CareTeam", "Goal", "Observation")  # what a plan's Bundle writes again under new fullUrls


def _fullurl_aliases(entries: list[Json]) -> dict[str, str]:
    """Map the fullUrls (`urn:uuid:`, absolute) of the resources a plan's Bundle writes again to their `Type/id`.

    References kept as they came follow those resources to their new fullUrls by `Type/id` (`retarget`); one
    by fullUrl (a transaction's `urn:uuid:` placeholder) would otherwise be left naming nothing in the new Bundle.
    """
    aliases: dict[str, str] = {}
    for entry in entries:
        resource, full_url = entry.get("resource"), entry.get("fullUrl")
        rtype = dt.resource_type(resource)
        if rtype in REEMITTED and isinstance(full_url, str) and isinstance(resource.get("id"), str):
            literal = f"{rtype}/{resource['id']}"
            if full_url != literal:
                aliases[full_url] = literal
    return aliases


def careplan_from_fhir(
    resource: Json,
    index: dict[str, Json],
    base: str,
    mrn_system: str,
    unnamed_id: str = "careplan-new",
    people: dict[str, Member] | None = None,
) -> Plan:
    """Return the plan for a CarePlan, reading its team, goals and check-ins from `index`; `unnamed_id` is the
    plan's id when the CarePlan has neither planbridge's identifier nor an id. `people` (literal reference ->
    member): the people the caller knows, read as those members where `index` lacks their resource (see
    refs.Resolver)."""
    subject = resource.get("subject", {})
    contained = {f"#{c['id']}": c for c in resource.get("contained", []) if dt.resource_type(c) and c.get("id")}
    resolver = Resolver({**index, **contained} if contained else index, subject.get("reference"), base, people)
    ours = codes.identifier_system(base, "plan")
    plan_ids = [i for i in resource.get("identifier", []) if i.get("system") == ours and i.get("value")]
    plan_id = plan_ids[0]["value"] if plan_ids else f"careplan-{resource['id']}" if "id" in resource else unnamed_id
    ehr_authored = plan_id == f"careplan-{resource.get('id')}"
    plan = Plan(id=plan_id, patient=_patient(subject, index, mrn_system, ehr_authored))
    extra = dt.residual(resource, CAREPLAN_KEYS, CAREPLAN_EXTENSIONS)
    others = [i for i in resource.get("identifier", []) if not (plan_ids and i is plan_ids[0])]
    plan.identifiers = dt.read_identifiers(others, extra)
    _read_team(plan, resource, resolver, extra, base)
    goal_ids = _read_goals(plan, resource, resolver, extra, base)
    _read_fields(plan, resource, resolver, extra)
    _read_activities(plan, resource, resolver, extra, goal_ids)
    plan.team = list(resolver.members.values())
    _take_contained(plan, resource, extra)
    if plan.id == f"careplan-{resource.get('id')}":  # a plan the EHR authored: its patient is always on its team
        _patient_on_team(plan)
    dt.remember_source(extra, resource, bool(plan_ids))
    plan.careplan_extra = extra
    return plan


def _patient_on_team(plan: Plan) -> None:
    """Put the patient on the team (first, as `patient` unless that id is taken), or back in it."""
    member = plan.patient_member()
    if member is not None:
        if not member.in_team:  # on the plan's team, not written into the EHR's CareTeam (careteam.py)
            member.in_team = True
            member.fhir_extra[IMPLIED] = True
            # first, as when nothing names the patient: a check-in or note the patient wrote since must not
            # move the patient down the team (a re-read would take the new order for an EHR change)
            plan.team.remove(member)
            plan.team.insert(0, member)
        return
    taken = {m.id for m in plan.team}
    member_id = next(c for c in ("patient", *(f"patient-{n}" for n in range(2, len(taken) + 3))) if c not in taken)
    member = Member(id=member_id, kind="patient", name=plan.patient.display_name, fhir_extra={IMPLIED: True})
    plan.team.insert(0, member)


def _read_team(plan: Plan, resource: Json, resolver: Resolver, extra: Json, base: str) -> None:
    teams = resource.get("careTeam", [])
    team = resolver.lookup(teams[0].get("reference")) if teams else None
    if team is not None and team.get("resourceType") == "CareTeam":
        _, plan.careteam_extra = careteam_from_fhir(team, resolver, base, plan.id)
        _keep_reference_extra(plan.careteam_extra, teams[0])
        if teams[0]["reference"].startswith("#"):  # contained in the CarePlan: written back there
            plan.careteam_extra.pop(dt.SOURCE, None)
            plan.careteam_extra[CONTAINED] = teams[0]["reference"][1:]
        teams = teams[1:]
    if teams:
        extra["careTeam"] = teams


def _read_goals(plan: Plan, resource: Json, resolver: Resolver, extra: Json, base: str) -> dict[str, str]:
    goal_ids: dict[str, str] = {}
    unresolved = []
    replacements: list[tuple[Goal, str, Json]] = []
    for ref in resource.get("goal", []):
        goal = resolver.lookup(ref.get("reference"))
        if goal is None or not goal_fits(goal) or ref["reference"] in goal_ids:
            unresolved.append(ref)  # not in the input, not a Goal the plan can hold, or named twice: kept as it came
            continue
        read = goal_from_fhir(goal, resolver, base, plan.id, fallback_id=f"goal-{len(plan.goals) + 1}")
        if plan.goal(read.goal.id) is not None:
            unresolved.append(ref)  # a second Goal with the same identifier: kept as it came
            continue
        _keep_reference_extra(read.goal.fhir_extra, ref)
        if ref["reference"].startswith("#"):  # contained in the CarePlan: written back there
            read.goal.fhir_extra.pop(dt.SOURCE, None)
            read.goal.fhir_extra[CONTAINED] = ref["reference"][1:]
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


def _keep_reference_extra(extra: Json, ref: Json) -> None:
    """Keep what the CarePlan's Reference to a goal or its CareTeam carried besides `reference` (a display...)."""
    rest = {k: v for k, v in ref.items() if k != "reference"}
    if rest:
        extra[REFERENCE] = rest


def _take_contained(plan: Plan, resource: Json, extra: Json) -> None:
    """Drop from the kept `contained` the CareTeam and Goals the plan now holds (they are rebuilt from it),
    remembering the order the EHR gave them all in."""
    taken = {contained_id(plan.careteam_extra): "CareTeam"} | {contained_id(g.fhir_extra): "Goal" for g in plan.goals}
    taken.pop(None, None)
    if not taken:
        return
    everything = extra.get("contained", [])
    extra[CONTAINED_ORDER] = [c.get("id") for c in everything]
    kept = [c for c in everything if taken.get(c.get("id")) != c.get("resourceType")]
    if kept:
        extra["contained"] = kept
    else:
        del extra["contained"]


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
    for activity in resource.get("activity", []):
        if isinstance(activity.get("detail"), dict) and "reference" not in activity:
            # numbered among the steps only: a push writes the steps before the kept activities, so a count
            # over every activity would give a step after a kept one another id at the next read
            plan.steps.append(step_from_fhir(activity, len(plan.steps), resolver, goal_ids))
        else:
            kept.append(activity)  # activity.reference (Task, ServiceRequest...): kept as it came
    if kept:
        extra["activity"] = kept
