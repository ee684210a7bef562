"""Checks fhir.resources does not make: required value-set bindings and R4 invariants.

fhir.resources validates structure and cardinality only (FHIR-NOTES.md); these are the required
bindings of the resources planbridge writes (https://hl7.org/fhir/R4/terminologies.html#required)
and the invariants gol-1, cpl-3 and ctm-1.
"""

from __future__ import annotations

import re

from mappings import codes
from mappings.datatypes import Json
from service.domain import model
from service.domain.rules import Issue

# [base/]Type/id[/_history/vid] (https://hl7.org/fhir/R4/references.html#literal)
_LITERAL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
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


def _goal(resource: Json, types: dict[str, str]) -> list[Issue]:
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


def _careplan(resource: Json, types: dict[str, str]) -> list[Issue]:
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


def _member_type(member: Json, types: dict[str, str]) -> str | None:
    """Return the resource type a Reference points at: its `type`, the Bundle entry it names, or its literal form."""
    reference = str(member.get("reference", ""))
    if member.get("type") or reference in types:
        return member.get("type") or types[reference]
    literal = _LITERAL.search(reference)
    return literal.group(1) if literal else None  # a urn:uuid or contained resource not in the Bundle: unknown


def _careteam(resource: Json, types: dict[str, str]) -> list[Issue]:
    issues = []
    for i, participant in enumerate(resource.get("participant", [])):
        kind = _member_type(participant.get("member", {}), types)
        if "onBehalfOf" in participant and kind not in ("Practitioner", None):
            issues.append(
                Issue(
                    f"CareTeam.participant[{i}].onBehalfOf",
                    "ctm-1: onBehalfOf only when the member is a Practitioner",
                    code="invariant",
                )
            )
    return issues


def check_resource(resource: Json, types: dict[str, str] | None = None) -> list[Issue]:
    """Return binding and invariant problems of one resource (an empty list when it is clean).

    `types` maps the fullUrls of a Bundle's entries to their resource types, to resolve references.
    """
    checks = {"Goal": _goal, "CarePlan": _careplan, "CareTeam": _careteam}
    check = checks.get(resource.get("resourceType", ""))
    return check(resource, types or {}) if check else []
