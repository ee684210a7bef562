"""Push a plan's goal to the FHIR server: find (or create) the Patient, then a conditional update."""

from __future__ import annotations

import logging
from datetime import datetime

from mappings import codes
from mappings.fhir import validate
from mappings.goal import goal_to_fhir
from service.domain.errors import NotFound
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.settings import Settings
from service.store.uow import UnitOfWork

log = logging.getLogger(__name__)


class PatientNotOnServer(NotFound):
    """The patient's MRN matches no Patient and the configuration does not allow creating one."""

    code = "patient-not-found"


def patient_reference(uow: UnitOfWork, client: FhirClient, settings: Settings, plan: Plan, now: datetime) -> str:
    """Return `Patient/<id>` for the plan's patient, looking it up by MRN once and remembering it."""
    link = uow.links.get(plan.id, "patient")
    if link is not None:
        return f"Patient/{link.fhir_id}"
    condition = f"{settings.mrn_system}|{plan.patient.mrn}"
    found = client.find_one("Patient", {"identifier": condition})
    if found is None:
        if not settings.create_patients:
            raise PatientNotOnServer(
                f"no Patient with an MRN of system {settings.mrn_system} for plan {plan.id}; "
                "PLANBRIDGE_CREATE_PATIENTS is off",
                plan_id=plan.id,
            )
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": settings.mrn_system, "value": plan.patient.mrn}],
        }
        found = client.create_if_none_exist(patient, f"identifier={condition}")
        log.info("plan %s: created Patient/%s", plan.id, found["id"])
    uow.links.record(plan.id, "patient", "Patient", found["id"], found.get("meta", {}).get("versionId"), now)
    return f"Patient/{found['id']}"


def push_goal(
    uow: UnitOfWork, client: FhirClient, settings: Settings, plan_id: str, goal_id: str, now: datetime
) -> str:
    """Write the goal's current state as a FHIR Goal; return its `Goal/<id>/_history/<version>`."""
    plan = uow.plans.get(plan_id)
    goal = plan.goal(goal_id) if plan else None
    if plan is None or goal is None:
        raise NotFound(f"goal {goal_id} of plan {plan_id} does not exist", plan_id=plan_id)
    subject = {"reference": patient_reference(uow, client, settings, plan, now)}
    resource = goal_to_fhir(goal, plan.id, subject, settings.identifier_base)
    validate(resource)
    stored = client.update_by_identifier(
        resource,
        codes.identifier_system(settings.identifier_base, "goal"),
        codes.goal_identifier_value(plan.id, goal.id),
    )
    version = stored.get("meta", {}).get("versionId")
    uow.links.record(plan.id, f"goal:{goal.id}", "Goal", stored["id"], version, now)
    log.info("plan %s goal %s -> Goal/%s version %s", plan.id, goal.id, stored["id"], version)
    return f"Goal/{stored['id']}/_history/{version}"
