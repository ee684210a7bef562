"""Goal <-> FHIR R4 Goal (https://hl7.org/fhir/R4/goal.html)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from mappings import codes
from service.domain.errors import MappingError
from service.domain.model import Coding, Goal, Identifier, Proposer, Target


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _coding_to_fhir(coding: Coding) -> dict[str, Any]:
    out: dict[str, Any] = {}
    entry = {k: v for k, v in (("system", coding.system), ("code", coding.code), ("display", coding.display)) if v}
    if coding.code:
        out["coding"] = [entry]
    if coding.display:
        out["text"] = coding.display
    return out


def _coding_from_fhir(concept: dict[str, Any]) -> Coding:
    first = (concept.get("coding") or [{}])[0]
    return Coding(
        system=first.get("system"), code=first.get("code"), display=concept.get("text") or first.get("display")
    )


def _target_to_fhir(target: Target) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if target.measure is not None:
        out["measure"] = _coding_to_fhir(target.measure)
    if target.value is not None:
        quantity: dict[str, Any] = {"value": _number(target.value)}
        if target.comparator:
            quantity["comparator"] = target.comparator
        if target.unit:
            quantity.update(unit=target.unit, system=codes.UCUM, code=target.unit)
        out["detailQuantity"] = quantity
    elif target.text is not None:
        out["detailString"] = target.text
    if ("detailQuantity" in out or "detailString" in out) and "measure" not in out:
        raise MappingError("gol-1: a target with a value needs a measure", errors={"Goal.target.measure": "required"})
    if target.due_date is not None:
        out["dueDate"] = target.due_date.isoformat()
    return out


def _target_from_fhir(target: dict[str, Any]) -> Target:
    quantity = target.get("detailQuantity") or {}
    return Target(
        measure=_coding_from_fhir(target["measure"]) if "measure" in target else None,
        value=Decimal(str(quantity["value"])) if "value" in quantity else None,
        comparator=quantity.get("comparator"),
        unit=quantity.get("code") or quantity.get("unit"),
        text=target.get("detailString"),
        due_date=date.fromisoformat(target["dueDate"]) if "dueDate" in target else None,
    )


def _proposer_to_fhir(proposer: Proposer, subject: dict[str, Any]) -> dict[str, Any]:
    if proposer.kind == "patient":
        return dict(subject)
    ref: dict[str, Any] = {"type": codes.PROPOSER_RESOURCE[proposer.kind]}
    if proposer.identifier is not None:
        ref["identifier"] = {"system": proposer.identifier.system, "value": proposer.identifier.value}
    if proposer.display:
        ref["display"] = proposer.display
    return ref


def _proposer_from_fhir(ref: dict[str, Any]) -> Proposer:
    resource_type = ref.get("type") or str(ref.get("reference", "")).split("/")[0]
    if resource_type not in codes.RESOURCE_PROPOSER:
        raise MappingError(
            f"Goal.expressedBy of type {resource_type!r} is not mapped", errors={"Goal.expressedBy": resource_type}
        )
    kind = codes.RESOURCE_PROPOSER[resource_type]
    if kind == "patient":
        return Proposer(kind="patient")
    ident = ref.get("identifier")
    return Proposer(
        kind=kind,
        identifier=Identifier(ident["system"], ident["value"]) if ident else None,
        display=ref.get("display"),
    )


def goal_to_fhir(goal: Goal, plan_id: str, subject: dict[str, Any], identifier_base: str) -> dict[str, Any]:
    """Return the FHIR Goal for a plan's goal; `subject` is the Reference to the patient."""
    resource: dict[str, Any] = {
        "resourceType": "Goal",
        "identifier": [
            {
                "system": codes.identifier_system(identifier_base, "goal"),
                "value": codes.goal_identifier_value(plan_id, goal.id),
            }
        ],
        "lifecycleStatus": goal.lifecycle_status,
        "description": {"text": goal.description},
        "subject": dict(subject),
    }
    if goal.priority:
        resource["priority"] = {"coding": [{"system": codes.GOAL_PRIORITY_SYSTEM, "code": goal.priority}]}
    if goal.start_date:
        resource["startDate"] = goal.start_date.isoformat()
    if goal.targets:
        resource["target"] = [_target_to_fhir(t) for t in goal.targets]
    if goal.proposed_by is not None:
        resource["expressedBy"] = _proposer_to_fhir(goal.proposed_by, subject)
    return resource


def goal_from_fhir(resource: dict[str, Any], identifier_base: str) -> tuple[str, Goal]:
    """Return (plan id, goal) from a FHIR Goal that carries our identifier."""
    system = codes.identifier_system(identifier_base, "goal")
    ours = [i for i in resource.get("identifier", []) if i.get("system") == system]
    if len(ours) != 1 or "/" not in ours[0].get("value", ""):
        raise MappingError("Goal has no planbridge identifier", errors={"Goal.identifier": system})
    plan_id, goal_id = ours[0]["value"].rsplit("/", 1)
    priority = None
    for coding in (resource.get("priority") or {}).get("coding", []):
        if coding.get("system") == codes.GOAL_PRIORITY_SYSTEM:
            priority = coding.get("code")
    goal = Goal(
        id=goal_id,
        description=(resource.get("description") or {}).get("text", ""),
        lifecycle_status=resource["lifecycleStatus"],
        priority=priority,
        proposed_by=_proposer_from_fhir(resource["expressedBy"]) if "expressedBy" in resource else None,
        start_date=date.fromisoformat(resource["startDate"]) if "startDate" in resource else None,
        targets=[_target_from_fhir(t) for t in resource.get("target", [])],
    )
    return plan_id, goal
