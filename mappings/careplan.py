"""The plan <-> FHIR R4 CarePlan (https://hl7.org/fhir/R4/careplan.html): goals, team, author,
period, review, the patient's own words, and steps as activity.detail with a title."""

from __future__ import annotations

from mappings import codes
from mappings import datatypes as dt
from mappings.careteam import writes_careteam
from mappings.datatypes import Json
from mappings.notes import note_from_fhir, note_is_modelled, note_to_fhir
from mappings.refs import Refs, Resolver, reference_extra
from service.domain.model import Plan, Step

CAREPLAN_KEYS = {
    "resourceType",
    "id",
    "meta",
    "identifier",
    "status",
    "intent",
    "category",
    "title",
    "subject",
    "period",
    "created",
    "author",
    "contributor",
    "careTeam",
    "goal",
    "activity",
    "note",
}
CAREPLAN_EXTENSIONS = {codes.EXT_WHAT_MATTERS, codes.EXT_GOAL_SETTING, codes.EXT_REVIEW}
GOAL_SETTING_PARTS = {"status": "valueCode", "date": "valueDateTime", "note": "valueString"}
REVIEW_PARTS = {"every": "valueDuration", "next": "valueDate"}
CONTAINED_ORDER = "_planbridge_contained_order"  # in careplan_extra: the ids of `contained` as the EHR ordered them
ACTIVITY_KEYS = {"id", "detail", "progress"}
DETAIL_KEYS = {"code", "status", "description", "goal", "performer", "scheduledPeriod", "scheduledString"}


def _plan_extensions(plan: Plan) -> list[Json]:
    out: list[Json] = []
    if plan.what_matters:
        out.append({"url": codes.EXT_WHAT_MATTERS, "valueString": plan.what_matters})
    if plan.goal_setting != "open" or plan.goal_setting_note or plan.goal_setting_date:
        parts = [
            {"url": "status", "valueCode": plan.goal_setting},
            {"url": "date", "valueDateTime": plan.goal_setting_date} if plan.goal_setting_date else None,
            {"url": "note", "valueString": plan.goal_setting_note} if plan.goal_setting_note else None,
        ]
        out.append({"url": codes.EXT_GOAL_SETTING, "extension": [p for p in parts if p]})
    if plan.review_every or plan.next_review:
        out.append(
            {
                "url": codes.EXT_REVIEW,
                "extension": [
                    e
                    for e in (
                        {"url": "every", "valueDuration": dt.quantity_to_fhir(plan.review_every)}
                        if plan.review_every
                        else None,
                        {"url": "next", "valueDate": plan.next_review} if plan.next_review else None,
                    )
                    if e
                ],
            }
        )
    return out


def step_to_fhir(step: Step, refs: Refs, path: str) -> Json:
    """Return a CarePlan.activity for a step: its detail, title and progress notes."""
    period = dt.prune({"start": step.start_date, "end": step.due_date})
    detail = dt.prune(
        {
            "code": dt.concept_to_fhir(step.code) if step.code else None,
            "status": step.status,
            "description": step.description,
            "goal": [refs.goal(g, f"{path}.goal_ids") for g in step.goal_ids],
            "performer": [refs.member(step.owner, f"{path}.owner")] if step.owner else [],
            "scheduledPeriod": period,
            "scheduledString": step.schedule,
        }
    )
    built = dt.prune(
        {
            "id": None if step.fhir_extra.get("_planbridge_synthetic_id") else step.id,
            "extension": [{"url": codes.ACTIVITY_TITLE, "valueString": step.title}] if step.title else [],
            "detail": dt.merge(detail, step.detail_extra),
            "progress": [note_to_fhir(n, refs, f"{path}.progress[{i}]") for i, n in enumerate(step.progress)],
        }
    )
    return dt.merge(built, step.fhir_extra)


def step_from_fhir(activity: Json, index: int, resolver: Resolver, goal_ids: dict[str, str]) -> Step:
    """Return a step from an activity with a detail; `goal_ids` maps goal references to goal ids."""
    detail = activity["detail"]
    titles = dt.extensions(activity, codes.ACTIVITY_TITLE)
    title = dt.simple_value(titles[0], "valueString") if len(titles) == 1 else None
    extra = dt.residual(activity, ACTIVITY_KEYS, {codes.ACTIVITY_TITLE} if title is not None else set())
    if "id" not in activity:
        extra["_planbridge_synthetic_id"] = True
    detail_extra = dt.residual(detail, DETAIL_KEYS, set())
    performers = detail.get("performer", [])
    if performers and not resolver.is_person(performers[0]):
        detail_extra["performer"], performers = performers, []  # a CareTeam, Organization...: kept as it came
    if len(performers) > 1:
        detail_extra["performer"] = performers[1:]
    known_goals = [g for g in detail.get("goal", []) if g.get("reference") in goal_ids and set(g) == {"reference"}]
    unknown_goals = [g for g in detail.get("goal", []) if g not in known_goals]
    if unknown_goals:
        detail_extra["goal"] = unknown_goals
    progress = activity.get("progress", [])
    if any(not note_is_modelled(n, resolver) for n in progress):
        extra["progress"] = [n for n in progress if not note_is_modelled(n, resolver)]  # e.g. by an Organization
    period = detail.get("scheduledPeriod", {})
    if set(period) - {"start", "end"}:
        detail_extra["scheduledPeriod"], period = period, {}
    return Step(
        id=activity.get("id") or f"activity-{index + 1}",
        title=title,
        status=detail.get("status", ""),
        description=detail.get("description"),
        code=dt.keep_concept(detail, "code", detail_extra),
        goal_ids=[goal_ids[g["reference"]] for g in known_goals],
        owner=resolver.member_for(performers[0]) if performers else None,
        start_date=period.get("start"),
        due_date=period.get("end"),
        schedule=detail.get("scheduledString"),
        progress=[note_from_fhir(n, resolver) for n in progress if note_is_modelled(n, resolver)],
        fhir_extra=extra,
        detail_extra=detail_extra,
    )


def careplan_to_fhir(plan: Plan, refs: Refs, contained: list[Json] | None = None) -> Json:
    """Return the CarePlan for a plan; `contained` are the CareTeam and Goals that go inside it, as the EHR had them."""
    ours = {"system": codes.identifier_system(refs.identifier_base, "plan"), "value": plan.id}
    built = dt.prune(
        {
            "resourceType": "CarePlan",
            "contained": contained or [],
            "extension": _plan_extensions(plan),
            "identifier": [*(dt.identifier_to_fhir(i) for i in plan.identifiers), ours],
            "status": plan.status,
            "intent": plan.intent,
            "category": [dt.concept_to_fhir(c) for c in plan.categories],
            "title": plan.title,
            "subject": refs.subject(),
            "period": dt.prune({"start": plan.period_start, "end": plan.period_end}),
            "created": plan.created_at,
            "author": refs.member(plan.author, "author") if plan.author else None,
            "contributor": [refs.member(c, f"contributors[{i}]") for i, c in enumerate(plan.contributors)],
            "careTeam": [{"reference": refs.careteam, **reference_extra(plan.careteam_extra)}]
            if refs.careteam and writes_careteam(plan)
            else [],
            "goal": [
                {**refs.goal(g.id, f"goals[{i}]"), **reference_extra(g.fhir_extra)} for i, g in enumerate(plan.goals)
            ],
            "activity": [step_to_fhir(s, refs, f"steps[{i}]") for i, s in enumerate(plan.steps)],
            "note": [note_to_fhir(n, refs, f"notes[{i}]") for i, n in enumerate(plan.notes)],
        }
    )
    out = dt.merge(built, plan.careplan_extra)
    order = plan.careplan_extra.get(CONTAINED_ORDER)
    if isinstance(order, list) and len(out.get("contained", [])) > 1:  # back in the order the EHR gave them
        rank = {element_id: i for i, element_id in enumerate(order)}
        out["contained"] = sorted(out["contained"], key=lambda c: rank.get(c.get("id"), len(rank)))
    return out


def read_plan_extensions(plan: Plan, resource: Json, extra: Json) -> None:
    """Set the plan fields planbridge's own CarePlan extensions carry; one the model cannot hold goes to `extra`."""
    read: set[str] = set()
    for ext in resource.get("extension", []):
        url = ext.get("url")
        if url not in CAREPLAN_EXTENSIONS:
            continue
        if url in read or not _read_plan_extension(plan, ext):
            extra.setdefault("extension", []).append(ext)  # a second one, or a shape we do not read: kept as it came
        else:
            read.add(url)


def _read_plan_extension(plan: Plan, ext: Json) -> bool:
    """Set the plan fields one of planbridge's extensions carries; False (and nothing set) when it does not fit."""
    if ext["url"] == codes.EXT_WHAT_MATTERS:
        plan.what_matters = dt.simple_value(ext, "valueString")
        return plan.what_matters is not None
    if ext["url"] == codes.EXT_GOAL_SETTING:
        parts = dt.extension_parts(ext, GOAL_SETTING_PARTS)
        if not parts or "status" not in parts or parts == {"status": "open"}:
            return False  # without a status, or one that writes no extension back
        plan.goal_setting = parts["status"]
        plan.goal_setting_date = parts.get("date")
        plan.goal_setting_note = parts.get("note")
        return True
    parts = dt.extension_parts(ext, REVIEW_PARTS)
    if not parts:
        return False
    plan.review_every = dt.quantity_from_fhir(parts["every"]) if "every" in parts else None
    plan.next_review = parts.get("next")
    return True
