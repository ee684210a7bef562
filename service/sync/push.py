"""Push a plan to the FHIR server as one transaction: CareTeam, Goals, check-ins and CarePlan.

The Patient is found by MRN once and remembered; it is created (conditionally) only where the
configuration allows. Every entry is conditional on planbridge's identifiers, so a repeated push
updates the same resources and never duplicates them.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from mappings.bundle import plan_to_bundle
from mappings.fhir import validate_bundle
from service.domain.errors import NotFound
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.settings import Settings
from service.store.uow import UnitOfWork

log = logging.getLogger(__name__)


class PatientNotOnServer(NotFound):
    """The patient's MRN matches no Patient and the configuration does not allow creating one."""

    code = "patient-not-found"


def patient_reference(uow: UnitOfWork, client: FhirClient, settings: Settings, plan: Plan) -> str | None:
    """Return `Patient/<id>` for the plan's patient, or None when the push should create it."""
    link = uow.links.get(plan.id, "patient")
    if link is not None:
        return f"Patient/{link.fhir_id}"
    found = client.find_one("Patient", {"identifier": f"{settings.mrn_system}|{plan.patient.mrn}"})
    if found is not None:
        return f"Patient/{found['id']}"
    if settings.create_patients:
        return None
    raise PatientNotOnServer(
        f"no Patient with an MRN of system {settings.mrn_system} for plan {plan.id}; PLANBRIDGE_CREATE_PATIENTS is off",
        plan_id=plan.id,
    )


def _local_key(resource: dict[str, Any], plan: Plan) -> str:
    """Return the key under which a pushed resource is remembered in fhir_links."""
    kind = resource["resourceType"]
    value = resource.get("identifier", [{}])[-1].get("value", "")
    if kind == "Patient":
        return "patient"
    if kind in ("Practitioner", "RelatedPerson"):
        return f"person:{value}"
    local = value.split("/", 1)[1] if "/" in value else value
    return {"CareTeam": "careteam", "CarePlan": "careplan"}.get(kind, f"{kind.lower()}:{local}")


def _location(location: str) -> tuple[str, str, str | None] | None:
    """Return (type, id, version) from a Location, relative or absolute, with or without _history."""
    parts = location.rstrip("/").split("/")
    if "_history" in parts:
        i = parts.index("_history")
        return (parts[i - 2], parts[i - 1], parts[i + 1]) if i >= 2 and i + 1 < len(parts) else None
    return (parts[-2], parts[-1], None) if len(parts) >= 2 else None


def push_plan(uow: UnitOfWork, client: FhirClient, settings: Settings, plan_id: str, now: datetime) -> int:
    """Send the plan's current state in one transaction; return how many resources it wrote."""
    plan = uow.plans.get(plan_id)
    if plan is None:
        raise NotFound(f"plan {plan_id} does not exist", plan_id=plan_id)
    bundle = plan_to_bundle(
        plan, settings.identifier_base, settings.mrn_system, patient_reference(uow, client, settings, plan)
    )
    validate_bundle(bundle)
    answer = client.transaction(bundle, idempotent=True)  # every entry is conditional
    for entry, result in zip(bundle["entry"], answer.get("entry", []), strict=False):
        parsed = _location(result.get("response", {}).get("location", ""))
        if parsed is not None:
            uow.links.record(plan.id, _local_key(entry["resource"], plan), *parsed, now)
    log.info("plan %s pushed: %d resources in one transaction", plan.id, len(bundle["entry"]))
    return len(bundle["entry"])
