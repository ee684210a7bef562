"""What a push makes of a plan before it goes to the server (service.sync.push).

The digest that tells whether a plan changed since its last push, the key each resource is remembered
under in fhir_links, the document sent while conflicts are open, the Patient reference the Bundle
names, and the pinning of resources the server already holds to the version last seen (If-Match).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mappings import codes
from mappings.reference_parse import local_reference, parse_reference
from service.domain import codec
from service.domain.errors import NotFound
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.settings import Settings
from service.sync.deletions import on_server, prune_goal_references
from service.sync.merge import mask, strip_bookkeeping


class PatientNotOnServer(NotFound):
    """The patient's MRN matches no Patient and the configuration does not allow creating one."""

    code = "patient-not-found"


def bundle_digest(bundle: dict[str, Any]) -> str:
    """Return a stable digest of a Bundle, to tell whether a plan changed since its last push."""
    return hashlib.sha256(json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


PERSON_KEY_LENGTH = 150  # fhir_links.local_key holds 160 characters


def person_key(identifier_value: str) -> str:
    """Return the fhir_links key of a Practitioner or RelatedPerson known by an identifier value:
    `person:<value>`, or `person:sha256:<digest of the value>` for a value too long for the column (an
    event's identifier may have 200 characters, an EHR's any number). Every other key is short by
    construction (ids have at most 64 characters)."""
    if len(identifier_value) <= PERSON_KEY_LENGTH:
        return f"person:{identifier_value}"
    return f"person:sha256:{hashlib.sha256(identifier_value.encode()).hexdigest()}"


def local_key(resource: dict[str, Any], identifier_base: str) -> str:
    """Return the key under which a plan's resource is remembered in fhir_links.

    Goals and check-ins are keyed by their id inside the plan: from planbridge's identifier when the
    resource has it, else from the server id, as the mapping names goals the EHR authored.
    """
    kind = resource["resourceType"]
    if kind == "Patient":
        return "patient"
    if kind in ("CareTeam", "CarePlan"):
        return kind.lower()
    systems = {"Goal": "goal", "Observation": "checkin", "Practitioner": "member", "RelatedPerson": "member"}
    ours = codes.identifier_system(identifier_base, systems.get(kind, kind.lower()))
    value = next((i.get("value", "") for i in resource.get("identifier", []) if i.get("system") == ours), None)
    if kind in ("Practitioner", "RelatedPerson"):
        return person_key(value or (resource.get("identifier") or [{}])[0].get("value", ""))
    if value is None:
        return f"{kind.lower()}:{'goal' if kind == 'Goal' else 'obs'}-{resource.get('id', '')}"
    return f"{kind.lower()}:{value.split('/', 1)[1] if '/' in value else value}"


def sendable(document: dict[str, Any], held: dict[str, Any]) -> dict[str, Any]:
    """Return what a push sends for a plan document with conflicts open: each held path at the server's
    value (`held`: path -> value), no link to a goal held out, in the codec's own shape (no empty lists).
    Items recorded as removed in the EHR are never sent (service.sync.deletions.on_server)."""
    stripped = on_server(document)
    if not held and stripped is document:
        return document
    masked = on_server(prune_goal_references(mask(document, held))) if held else stripped
    return {**strip_bookkeeping(codec.to_dict(codec.from_dict(Plan, masked))), **_bookkeeping(document)}


def _bookkeeping(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in strip_bookkeeping(document)}


def parse_location(location: str) -> tuple[str, str, str | None] | None:
    """Return (type, id, version) from a Location, relative or absolute, with or without _history."""
    parsed = parse_reference(location.rstrip("/"))
    return parsed.literal if parsed is not None else None  # None for a urn:uuid, #contained or malformed


def _patient_reference(
    linked_id: str | None, client: FhirClient, settings: Settings, plan: Plan
) -> tuple[str | None, int]:
    """Return (`Patient/<id>` or None to create it in the Bundle, requests spent finding it).

    A plan holding the EHR's own reference to its Patient (`patient.fhir_reference`, e.g. imported
    from a Bundle whose Patient was referenced but absent) is pushed with that reference as it is,
    and its MRN need not be known. Otherwise the Patient is found by the plan's MRN under the plan's
    `mrn_system` (default `PLANBRIDGE_MRN_SYSTEM`): the identifier as the EHR has it, never rewritten.
    Call it outside any database transaction: finding the Patient may take a request.
    """
    if plan.patient.fhir_reference:
        # the Bundle names the Patient by the reference itself (plan_to_bundle); this is its `Patient/id`
        return local_reference(plan.patient.fhir_reference), 0
    if linked_id is not None:
        return f"Patient/{linked_id}", 0
    system = plan.patient.mrn_system or settings.mrn_system
    # exactly this MRN: a server matching identifiers without case must not hand over a case twin's record
    found = client.find_by_identifier("Patient", system, plan.patient.mrn)
    if found is not None:
        return f"Patient/{found['id']}", 1
    if settings.create_patients:
        return None, 1
    raise PatientNotOnServer(
        f"no Patient with an MRN of system {system} for plan {plan.id}; PLANBRIDGE_CREATE_PATIENTS is off",
        plan_id=plan.id,
    )


def _pin_versions(bundle: dict[str, Any], versions: dict[str, tuple[str, str, str | None]], base: str) -> None:
    """Turn conditional updates of resources the server already holds into `PUT Type/id` + If-Match."""
    for entry in bundle["entry"]:
        request, resource = entry["request"], entry["resource"]
        known = versions.get(local_key(resource, base))
        if request["method"] == "PUT" and known is not None and known[2] is not None:
            rtype, fhir_id, version = known
            request["url"] = f"{rtype}/{fhir_id}"
            request["ifMatch"] = f'W/"{version}"'
            resource["id"] = fhir_id
