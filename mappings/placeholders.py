"""A Bundle's `urn:` placeholders to entries planbridge does not write, turned into references that need no entry."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import is_dataclass
from typing import Any

from mappings.datatypes import Json, ref_from_fhir, ref_to_fhir
from mappings.reference_parse import parse_reference
from service.domain.errors import MappingError
from service.domain.model import Plan
from service.domain.types import Ref

# ---- placeholders: a Bundle's `urn:uuid:` / `urn:oid:` references to its own entries ---------------------------
#
# In a Bundle a `urn:` reference names the entry with that fullUrl, and only within that Bundle: a FHIR server
# refuses a transaction holding one that no entry has as its fullUrl (HAPI-0541 "Unable to satisfy placeholder
# ID"). planbridge writes its own Bundle, under fullUrls of its own, so a reference it reads as it came (a Goal's
# `addresses`, a kept `CarePlan.addresses`...) cannot stay the input's placeholder.


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _concept_text(concept: object) -> str | None:
    """Return a CodeableConcept's text, else the display of its first coding that has one."""
    if not isinstance(concept, dict):
        return None
    codings = concept.get("coding") if isinstance(concept.get("coding"), list) else []
    displays = [_text(c.get("display")) for c in codings if isinstance(c, dict)]
    return _text(concept.get("text")) or next((d for d in displays if d), None)


def _display_of(resource: Json) -> str | None:
    """Return what names a resource for a person: its code (a Condition, an Observation...), its first type
    (an Encounter), its name, its description or its title; None when it has none of them."""
    types = resource.get("type")
    first_type = types[0] if isinstance(types, list) and types else None
    found = _concept_text(resource.get("code")) or _concept_text(first_type)
    name = resource.get("name")
    if isinstance(name, list) and name and isinstance(name[0], dict):
        name = name[0].get("text")
    description = resource.get("description")
    if isinstance(description, dict):
        description = description.get("text")
    return found or _text(name) or _text(description) or _text(resource.get("title"))


def _usable_identifier(resource: Json) -> Json | None:
    idents = resource.get("identifier")
    idents = idents if isinstance(idents, list) else [idents] if isinstance(idents, dict) else []
    for ident in idents:
        if isinstance(ident, dict) and _text(ident.get("system")) and _text(ident.get("value")):
            return {"system": ident["system"], "value": ident["value"]}
    return None


def without_placeholder(ref: Json, entry: Json | None, bundle_type: object, path: str) -> Json:
    """Return a Reference naming a Bundle entry by its `urn:` fullUrl as one that needs no entry of a Bundle.

    A logical reference (`type` and the reference's own identifier, else the entry's first with a system and a
    value: a server never has to hold it); else the entry's server id when the input Bundle gives it one (a
    transaction's or batch's `PUT Type/id`); else a display-only reference (the reference's own display, or what
    names the resource). Anything else the Reference carried (display, extension...) is kept. None of them: a
    MappingError naming `path`, as is a placeholder that is the fullUrl of no entry.
    """
    reference = ref.get("reference")
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise MappingError(
            f"{path} names {reference}, which is the fullUrl of no entry of the Bundle",
            errors={path: f"{reference}: no entry of the Bundle has it as its fullUrl"},
        )
    rtype = resource["resourceType"]
    rest = {k: v for k, v in ref.items() if k != "reference"}
    request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
    put = parse_reference(request.get("url")) if request.get("method") == "PUT" else None
    identifier = rest.get("identifier") or _usable_identifier(resource)
    if identifier is not None:
        return {**rest, "type": rest.get("type") or rtype, "identifier": identifier}
    if bundle_type in ("transaction", "batch") and put is not None and put.kind == "relative" and put.type == rtype:
        return {"reference": put.type_id, **rest}
    display = _text(rest.get("display")) or _display_of(resource)
    if display is not None:
        return {**rest, "type": rest.get("type") or rtype, "display": display}
    raise MappingError(
        f"{path} names the {rtype} of the Bundle's entry {reference}, which planbridge does not write, and that "
        "entry has neither an identifier nor anything to name it by",
        errors={path: f"{reference}: a {rtype} with no server id, identifier or display to refer to it by"},
    )


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ()


def _json_without(value: Any, path: str, fix: Callable[[Json, str], Json | None]) -> Any:
    """Return a JSON value with `fix` applied to every dict holding a `reference` (copy on write: what a plan
    keeps as it came may be shared with the input Bundle, which stays as it was)."""
    if isinstance(value, dict):
        reference = value.get("reference")
        out: dict[str, Any] | None = fix(value, f"{path}.reference") if isinstance(reference, str) else None
        source = out if out is not None else value
        for key, item in source.items():
            if isinstance(item, dict | list):
                new = _json_without(item, f"{path}.{key}" if path else key, fix)
                if new is not item:
                    out = dict(source) if out is None else out
                    out[key] = new
        return value if out is None else out
    if isinstance(value, list):
        items = [_json_without(item, f"{path}[{i}]", fix) for i, item in enumerate(value)]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _object_without(value: Any, path: str, fix: Callable[[Json, str], Json | None]) -> Any:
    """Return a plan part with `fix` applied to every reference it holds, its Refs and the JSON it keeps as it
    came; what holds a changed reference is a new value, set on the (freshly read) dataclass holding it."""
    if isinstance(value, Ref):
        if not isinstance(value.reference, str):
            return value
        built = fix(ref_to_fhir(value), f"{path}.reference")
        return value if built is None else ref_from_fhir(built)
    if isinstance(value, dict):
        return _json_without(value, path, fix)
    if isinstance(value, list):
        items = [_object_without(item, f"{path}[{i}]", fix) for i, item in enumerate(value)]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    names = _field_names(type(value))
    changed = {}
    for name in names:
        item = getattr(value, name)
        if isinstance(item, dict | list | Ref) or is_dataclass(item):
            new = _object_without(item, f"{path}.{name}" if path else name, fix)
            if new is not item:
                changed[name] = new
    if not changed:
        return value
    if type(value).__dataclass_params__.frozen:  # type: ignore[attr-defined]
        return dataclasses.replace(value, **changed)
    for name, new in changed.items():
        setattr(value, name, new)
    return value


def resolve_placeholders(
    plan: Plan, entries: list[Json], bundle_type: object, own_full_urls: Callable[[Plan], set[str]]
) -> Plan:
    """Return the plan read from a Bundle with no reference naming an entry by its `urn:` fullUrl left in it
    but those the plan's own Bundle holds under the same fullUrl (`own_full_urls`, asked only when there is a
    `urn:` reference: planbridge's fullUrls are stable, so a Bundle it wrote reads back to the same Bundle).

    Any other `urn:uuid:` or `urn:oid:` reference the plan kept as it came (what a transaction names its entries
    by; those of the resources planbridge writes again were turned into their `Type/id` before the CarePlan was
    read, see `mappings.bundle`) names a resource the plan's own Bundle does not carry under that fullUrl: it
    becomes a reference that needs no entry (`without_placeholder`), or the plan is refused with a MappingError
    naming the reference's path in the plan.
    """
    by_url = {e["fullUrl"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("fullUrl"), str)}
    own: list[set[str]] = []

    def fix(ref: Json, path: str) -> Json | None:
        reference = ref["reference"]
        if reference[:4].lower() != "urn:":
            return None
        if not own:
            own.append(own_full_urls(plan))
        if reference in own[0]:
            return None
        return without_placeholder(ref, by_url.get(reference), bundle_type, path)

    return _object_without(plan, "", fix)
