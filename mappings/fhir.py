"""The one module that imports fhir.resources: structural validation of R4 resources.

fhir.resources 8 has no plain R4 package; Goal, CarePlan, CareTeam, Patient and Bundle are the
same in R4B (see FHIR-NOTES.md), so R4B models check what we send and receive.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from mappings.validate import check_resource
from service.domain.errors import MappingError
from service.domain.rules import Issue


def validate(resource: dict[str, Any]) -> None:
    """Check a resource's structure and cardinality; raise MappingError naming each bad element."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise MappingError("resource has no resourceType", errors={"resourceType": "required"})
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        raise MappingError(f"unknown resource type {resource_type}", errors={"resourceType": "unknown"}) from None
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        errors = {
            ".".join([resource_type, *(str(p) for p in err["loc"] if p != "__root__")]): err["msg"]
            for err in exc.errors()
        }
        raise MappingError(f"{resource_type} is not valid FHIR R4", errors=errors) from None


def issues_of(resource: dict[str, Any]) -> list[Issue]:
    """Return every problem of a resource: structure (fhir.resources), then bindings and invariants."""
    try:
        validate(resource)
    except MappingError as exc:
        errors = exc.data.get("errors") or {"": exc.detail}
        return [Issue(str(path), str(msg), code="structure") for path, msg in dict(errors).items()]
    return check_resource(resource)


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Validate a Bundle and every resource in it; raise MappingError naming each problem."""
    found: dict[str, str] = {}
    for i, entry in enumerate(bundle.get("entry", [])):
        resource = entry.get("resource")
        if isinstance(resource, dict):
            for issue in issues_of(resource):
                if issue.severity == "error":
                    found[f"Bundle.entry[{i}].resource/{issue.path}"] = issue.message
    if found:
        raise MappingError(f"{len(found)} problem(s) in the Bundle", errors=found)
