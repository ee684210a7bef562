"""The one module that imports fhir.resources: structural validation of R4 resources.

fhir.resources 8 has no plain R4 package; Goal, CarePlan, CareTeam, Patient and Bundle are the
same in R4B (see FHIR-NOTES.md), so R4B models define what we send and receive. Building the
pydantic models runs at ~5k Goals/s, too slow for every resource planbridge reads and writes, so
`validate` runs checks compiled once from those same models' field definitions (element names,
JSON types, cardinality, required elements, choice groups: mappings/structure.py).
`validate_with_models` keeps the full pydantic validation, to compare against.
"""

from __future__ import annotations

import types
import typing
import uuid
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from pydantic._internal._validators import import_string

from mappings.structure import ElementDef, StructureValidator, TypeDef
from mappings.validate import check_resource
from service.domain.errors import MappingError
from service.domain.rules import Issue

_ABSTRACT = {"Resource", "DomainResource"}


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _kind(tp: Any) -> tuple[str, bool]:
    """Return (type name, is primitive) for a field's item annotation."""
    if tp is bool:
        return "boolean", True
    if typing.get_origin(tp) is typing.Annotated:
        for meta in typing.get_args(tp)[1:]:
            name = getattr(meta, "__visit_name__", None)
            if name:
                return name, True
        if typing.get_args(tp)[0] is uuid.UUID:
            return "uuid", True
    path = getattr(tp, "_model_klass", None)
    if path:
        return ("Resource", False) if path.rsplit(".", 1)[1] in _ABSTRACT else (path, False)
    raise TypeError(f"unexpected field annotation {tp!r}")


def _element(key: str, field: Any) -> ElementDef:
    extra = field.json_schema_extra or {}
    if key == "fhir_comments":
        return ElementDef(key, "fhir_comments", primitive=True)
    tp, _ = _strip_optional(field.annotation)
    is_list = typing.get_origin(tp) is list
    nullable = False
    if is_list:
        tp, nullable = _strip_optional(typing.get_args(tp)[0])
    kind, primitive = _kind(tp)
    return ElementDef(
        key=key,
        type=kind,
        primitive=primitive,
        is_list=is_list,
        nullable_items=nullable and (primitive or key.startswith("_")),
        required=bool(extra.get("element_required")) or field.is_required(),
        choice=extra.get("one_of_many"),
        choice_required=bool(extra.get("one_of_many_required")),
    )


def _definition(key: str) -> TypeDef | None:
    """Read a type's definition from its fhir.resources R4B model (a resource name or a model path)."""
    try:
        model = import_string(key) if "." in key else get_fhir_model_class(key)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    name = model.__name__
    is_resource = "." not in key and model.has_resource_base() and name not in _ABSTRACT
    elements = tuple(_element(f.alias or n, f) for n, f in model.model_fields.items())
    return TypeDef(name=name, is_resource=is_resource, elements=elements)


_STRUCTURE = StructureValidator(_definition)
for _type in ("Goal", "CarePlan", "CareTeam", "Observation", "Patient", "Practitioner", "RelatedPerson", "Bundle"):
    _STRUCTURE.knows(_type)  # compile what planbridge maps at import, not on the first request


def structure_errors(resource: Any) -> dict[str, str]:
    """Return {element path: message} for each structural problem of a resource (empty when clean)."""
    return _STRUCTURE.errors(resource)


def _require_type(resource: Any) -> str:
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(resource_type, str):
        raise MappingError("resource has no resourceType", errors={"resourceType": "required"})
    if not _STRUCTURE.knows(resource_type):
        raise MappingError(f"unknown resource type {resource_type}", errors={"resourceType": "unknown"})
    return resource_type


def validate(resource: dict[str, Any]) -> None:
    """Check a resource's structure and cardinality; raise MappingError naming each bad element."""
    resource_type = _require_type(resource)
    errors = _STRUCTURE.errors(resource)
    if errors:
        raise MappingError(f"{resource_type} is not valid FHIR R4", errors=errors)


def validate_with_models(resource: dict[str, Any]) -> None:
    """Check a resource by building its fhir.resources model (slow; the reference `validate` is compared to)."""
    resource_type = _require_type(resource)
    try:
        get_fhir_model_class(resource_type).model_validate(resource)
    except ValidationError as exc:
        errors = {
            ".".join([resource_type, *(str(p) for p in err["loc"] if p != "__root__")]): err["msg"]
            for err in exc.errors()
        }
        raise MappingError(f"{resource_type} is not valid FHIR R4", errors=errors) from None


def issues_of(resource: dict[str, Any]) -> list[Issue]:
    """Return every problem of a resource: structure first, then bindings and invariants."""
    try:
        validate(resource)
    except MappingError as exc:
        errors = exc.data.get("errors") or {"": exc.detail}
        return [Issue(str(path), str(msg), code="structure") for path, msg in dict(errors).items()]
    return check_resource(resource)


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Validate a Bundle and every resource in it; raise MappingError naming each problem.

    Paths name the element inside the Bundle, e.g. `Bundle.entry[2].resource.target[0].measure`.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise MappingError("not a Bundle", errors={"resourceType": "Bundle"})
    found = _STRUCTURE.errors(bundle)
    if not found:
        found = {issue.path: issue.message for issue in check_resource(bundle) if issue.severity == "error"}
        entries = bundle.get("entry", [])
        types = {e["fullUrl"]: e["resource"]["resourceType"] for e in entries if "fullUrl" in e and "resource" in e}
        for i, entry in enumerate(entries):
            resource = entry.get("resource")
            if isinstance(resource, dict):
                prefix = f"Bundle.entry[{i}].resource"
                for issue in check_resource(resource, types):
                    if issue.severity == "error":
                        found[prefix + issue.path[len(resource["resourceType"]) :]] = issue.message
    if found:
        raise MappingError(f"{len(found)} problem(s) in the Bundle", errors=found)
