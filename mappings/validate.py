"""Checks fhir.resources does not make: required value-set bindings and R4 invariants.

fhir.resources validates structure and cardinality only (FHIR-NOTES.md); these are the required
bindings of the resources planbridge writes (https://hl7.org/fhir/R4/terminologies.html#required)
and the invariants gol-1, cpl-3 and ctm-1.
"""

from __future__ import annotations

from mappings import codes
from mappings.datatypes import Json
from service.domain import model
from service.domain.rules import Issue

CAREPLAN_ACTIVITY_KINDS = (
    "Appointment",
    "CommunicationRequest",
    "DeviceRequest",
    "MedicationRequest",
    "NutritionOrder",
    "Task",
    "ServiceRequest",
    "VisionPrescription",
)


def _code(value: object, allowed: tuple[str, ...], path: str) -> list[Issue]:
    if value is None or value in allowed:
        return []
    return [Issue(path, f"{value!r} is not in the required value set ({', '.join(allowed)})", code="code-invalid")]


def _goal(resource: Json) -> list[Issue]:
    issues = _code(resource.get("lifecycleStatus"), model.GOAL_LIFECYCLE_STATUSES, "Goal.lifecycleStatus")
    for i, target in enumerate(resource.get("target", [])):
        if any(k.startswith("detail") for k in target) and "measure" not in target:
            issues.append(
                Issue(
                    f"Goal.target[{i}]",
                    "gol-1: target.measure is required if target.detail is populated",
                    code="invariant",
                )
            )
    for i, ext in enumerate(resource.get("extension", [])):
        if ext.get("url") != codes.GOAL_ACCEPTANCE:
            continue
        for sub in ext.get("extension", []):
            if sub.get("url") == "status":
                issues += _code(sub.get("valueCode"), model.AGREEMENT_STATUSES, f"Goal.extension[{i}].status")
        if not any(sub.get("url") == "individual" for sub in ext.get("extension", [])):
            issues.append(Issue(f"Goal.extension[{i}]", "goal-acceptance needs an individual", code="required"))
    return issues


def _careplan(resource: Json) -> list[Issue]:
    issues = _code(resource.get("status"), model.PLAN_STATUSES, "CarePlan.status")
    issues += _code(resource.get("intent"), model.PLAN_INTENTS, "CarePlan.intent")
    for i, activity in enumerate(resource.get("activity", [])):
        path = f"CarePlan.activity[{i}]"
        if "reference" in activity and "detail" in activity:
            issues.append(Issue(path, "cpl-3: provide a reference or detail, not both", code="invariant"))
        detail = activity.get("detail", {})
        issues += _code(detail.get("status"), model.STEP_STATUSES, f"{path}.detail.status")
        issues += _code(detail.get("kind"), CAREPLAN_ACTIVITY_KINDS, f"{path}.detail.kind")
    return issues


def _careteam(resource: Json) -> list[Issue]:
    issues = []
    for i, participant in enumerate(resource.get("participant", [])):
        member = participant.get("member", {})
        kind = member.get("type") or str(member.get("reference", "")).split("/")[0]
        if "onBehalfOf" in participant and kind != "Practitioner":
            issues.append(
                Issue(
                    f"CareTeam.participant[{i}].onBehalfOf",
                    "ctm-1: onBehalfOf only when the member is a Practitioner",
                    code="invariant",
                )
            )
    return issues


def check_resource(resource: Json) -> list[Issue]:
    """Return binding and invariant problems of one resource (an empty list when it is clean)."""
    checks = {"Goal": _goal, "CarePlan": _careplan, "CareTeam": _careteam}
    check = checks.get(resource.get("resourceType", ""))
    return check(resource) if check else []
