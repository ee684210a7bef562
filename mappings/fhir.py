"""The one module that imports fhir.resources: structural validation of R4 resources.

fhir.resources 8 has no plain R4 package; Goal, CarePlan, CareTeam, Patient and Bundle are the
same in R4B (see FHIR-NOTES.md), so R4B models check what we send and receive.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from service.domain.errors import MappingError


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
