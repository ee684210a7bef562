"""FHIR R4 datatypes <-> the plan's value types (https://hl7.org/fhir/R4/datatypes.html)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.domain.types import Coding, Concept, Identifier, Quantity, Range, Ratio, Ref

Json = dict[str, Any]


def prune(obj: Json) -> Json:
    """Drop keys whose value is None or empty, as FHIR JSON never carries them."""
    return {k: v for k, v in obj.items() if v is not None and v != [] and v != {}}


def number(value: Decimal) -> int | float:
    """Return a JSON number for a decimal."""
    return int(value) if value == value.to_integral_value() and "E" not in str(value) else float(value)


def decimal(value: Any) -> Decimal:
    """Return a decimal from a JSON number without binary noise."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def identifier_to_fhir(ident: Identifier) -> Json:
    return prune({"system": ident.system or None, "value": ident.value or None})


def identifier_fits(data: Json) -> bool:
    """Tell whether an Identifier is just a system and a value, all the model holds (else it is kept as it came)."""
    return set(data) == {"system", "value"}


def read_identifiers(idents: list[Json], extra: Json) -> list[Identifier]:
    """Return the identifiers the model holds; the others (with use, period, no value...) go to extra["identifier"]."""
    kept = [i for i in idents if not identifier_fits(i)]
    if kept:
        extra["identifier"] = kept
    return [identifier_from_fhir(i) for i in idents if identifier_fits(i)]


def identifier_from_fhir(data: Json) -> Identifier:
    return Identifier(system=data.get("system", ""), value=data.get("value", ""))


def coding_to_fhir(c: Coding) -> Json:
    return prune(
        {
            "system": c.system,
            "version": c.version,
            "code": c.code,
            "display": c.display,
            "userSelected": c.user_selected,
        }
    )


def coding_from_fhir(data: Json) -> Coding:
    return Coding(
        system=data.get("system"),
        code=data.get("code"),
        display=data.get("display"),
        version=data.get("version"),
        user_selected=data.get("userSelected"),
    )


def concept_to_fhir(c: Concept) -> Json:
    codings = [x for x in map(coding_to_fhir, c.codings) if x]  # a Coding that said nothing writes nothing
    return prune({"coding": codings, "text": c.text})


def concept_from_fhir(data: Json) -> Concept:
    return Concept(codings=[coding_from_fhir(x) for x in data.get("coding", [])], text=data.get("text"))


def concept_says_something(data: Json) -> bool:
    """Tell whether a CodeableConcept has text or a coding the model reads (only ids or extensions say nothing)."""
    return bool(data.get("text") or any(not CODING_KEYS.isdisjoint(c) for c in data.get("coding", ())))


# What the value types hold: a datatype with more (an element id, an extension) does not fit the
# model, and is kept as it came where the model cannot hold it.
CODING_KEYS = frozenset({"system", "version", "code", "display", "userSelected"})
CONCEPT_KEYS = frozenset({"coding", "text"})
QUANTITY_KEYS = frozenset({"value", "comparator", "unit", "system", "code"})


def concept_fits(data: Json) -> bool:
    """Tell whether a CodeableConcept is only codings (of system, code...) and text."""
    return CONCEPT_KEYS.issuperset(data) and all(CODING_KEYS.issuperset(c) for c in data.get("coding", ()))


def quantity_fits(data: Json) -> bool:
    """Tell whether a Quantity (or Duration) is only value, comparator, unit, system and code."""
    return QUANTITY_KEYS.issuperset(data)


def range_fits(data: Json) -> bool:
    return {"low", "high"}.issuperset(data) and all(quantity_fits(q) for q in data.values())


def ratio_fits(data: Json) -> bool:
    return {"numerator", "denominator"}.issuperset(data) and all(quantity_fits(q) for q in data.values())


def keep_concept(element: Json, key: str, extra: Json) -> Concept | None:
    """Return the concept at `key` when it fits the model; else keep it as it came in `extra` and return None."""
    data = element.get(key)
    if data is None:
        return None
    if concept_fits(data):
        return concept_from_fhir(data)
    extra[key] = data
    return None


def quantity_to_fhir(q: Quantity) -> Json:
    return prune(
        {
            "value": number(q.value) if q.value is not None else None,
            "comparator": q.comparator,
            "unit": q.unit,
            "system": q.system,
            "code": q.code,
        }
    )


def quantity_from_fhir(data: Json) -> Quantity:
    return Quantity(
        value=decimal(data["value"]) if "value" in data else None,
        comparator=data.get("comparator"),
        unit=data.get("unit"),
        system=data.get("system"),
        code=data.get("code"),
    )


def range_to_fhir(r: Range) -> Json:
    return prune(
        {"low": quantity_to_fhir(r.low) if r.low else None, "high": quantity_to_fhir(r.high) if r.high else None}
    )


def range_from_fhir(data: Json) -> Range:
    return Range(
        low=quantity_from_fhir(data["low"]) if "low" in data else None,
        high=quantity_from_fhir(data["high"]) if "high" in data else None,
    )


def ratio_to_fhir(r: Ratio) -> Json:
    return prune(
        {
            "numerator": quantity_to_fhir(r.numerator) if r.numerator else None,
            "denominator": quantity_to_fhir(r.denominator) if r.denominator else None,
        }
    )


def ratio_from_fhir(data: Json) -> Ratio:
    return Ratio(
        numerator=quantity_from_fhir(data["numerator"]) if "numerator" in data else None,
        denominator=quantity_from_fhir(data["denominator"]) if "denominator" in data else None,
    )


def ref_to_fhir(r: Ref) -> Json:
    return prune(
        {
            "reference": r.reference,
            "type": r.type,
            "identifier": identifier_to_fhir(r.identifier) if r.identifier else None,
            "display": r.display,
        }
    )


def ref_from_fhir(data: Json) -> Ref:
    ident = data.get("identifier")
    return Ref(
        reference=data.get("reference"),
        type=data.get("type"),
        display=data.get("display"),
        identifier=identifier_from_fhir(ident) if ident else None,
    )


def resource_type(resource: Any) -> str | None:
    """Return a resource's resourceType, or None when the value is not a resource object."""
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    return rtype if isinstance(rtype, str) else None


def ref_fits(data: Json) -> bool:
    """Tell whether a Reference holds only what Ref does (no element id or extension, a plain identifier)."""
    ident = data.get("identifier")
    return set(data) <= {"reference", "type", "identifier", "display"} and (ident is None or identifier_fits(ident))


def extensions(resource: Json, url: str) -> list[Json]:
    """Return the extensions of an element with this URL."""
    return [e for e in resource.get("extension", []) if e.get("url") == url]


def sub_extension(ext: Json, url: str) -> Json | None:
    """Return the sub-extension with this URL inside a complex extension."""
    return next((e for e in ext.get("extension", []) if e.get("url") == url), None)


def simple_value(ext: Json, key: str) -> Any:
    """Return an extension's value if it is exactly `{url, key}` (e.g. valueString), else None."""
    return ext[key] if set(ext) == {"url", key} else None


def extension_parts(ext: Json, shapes: dict[str, str]) -> dict[str, Any] | None:
    """Return {url: value} for a complex extension whose sub-extensions all have the shapes the model reads.

    `shapes` maps each sub-extension URL to its value[x] key. Anything else (another URL or value
    type, a URL given twice, an element id, a value on the extension itself) gives None: the
    extension does not fit the model and is kept as it came.
    """
    if set(ext) != {"url", "extension"}:
        return None
    parts: dict[str, Any] = {}
    for sub in ext["extension"]:
        url = sub.get("url")
        if url not in shapes or url in parts or set(sub) != {"url", shapes[url]}:
            return None
        value = sub[shapes[url]]
        fits = _VALUE_FITS.get(shapes[url])
        if fits is not None and not fits(value):
            return None  # e.g. a valueDuration with an extension the model cannot hold
        parts[url] = value
    return parts


_VALUE_FITS = {"valueCodeableConcept": concept_fits, "valueDuration": quantity_fits, "valueQuantity": quantity_fits}


def split_extensions(element: Json, modelled: set[str]) -> tuple[list[Json], list[Json]]:
    """Split an element's extensions into those the model reads and the rest (kept as they are)."""
    ours, rest = [], []
    for ext in element.get("extension", []):
        (ours if ext.get("url") in modelled else rest).append(ext)
    return ours, rest


# What of a resource's `meta` is the EHR's content rather than the server's bookkeeping (versionId,
# lastUpdated, source): its security labels, tags and claimed profiles. Kept and written back, so a push of
# an EHR resource does not strip, say, a "restricted" label from it.
KEPT_META = ("profile", "security", "tag")


def residual(element: Json, modelled: set[str], modelled_extensions: set[str]) -> Json:
    """Return what the model does not hold: unmodelled keys and extensions, kept to write back (and of a
    resource's `meta`, which the model leaves to the server, the labels, tags and profiles)."""
    rest = {k: v for k, v in element.items() if k not in modelled and k != "extension"}
    _, other_ext = split_extensions(element, modelled_extensions)
    if other_ext:
        rest["extension"] = other_ext
    meta = element.get("meta")
    if "meta" in modelled and isinstance(meta, dict):
        kept = {k: meta[k] for k in KEPT_META if k in meta}
        if kept:
            rest["meta"] = kept
    return rest


SOURCE = "_planbridge_source"


def remember_source(extra: Json, resource: Json, ours_present: bool) -> None:
    """Note the reference an EHR resource had, when planbridge will re-emit it under a new one.

    Only resources without planbridge's identifier need it: the Bundle creates them afresh, and
    references the model keeps as they came must follow them (see `retarget`).
    """
    if not ours_present and resource.get("id"):
        extra[SOURCE] = f"{resource['resourceType']}/{resource['id']}"


def retarget(element: Any, moved: dict[str, str]) -> Any:
    """Return the element with every `reference` naming a moved resource rewritten to its new reference.

    The element is never changed: what holds a rewritten reference is copied (copy on write), the rest is
    shared. A Bundle's resources share the lists and objects a plan keeps as they came (`merge`), so
    rewriting them in place would write a Bundle's `urn:uuid:` references into the plan itself.
    """
    if isinstance(element, dict):
        out: dict[str, Any] | None = None
        for key, value in element.items():
            if key == "reference" and isinstance(value, str) and value in moved:
                new = moved[value]
            else:
                new = retarget(value, moved)
            if new is not value:
                if out is None:
                    out = dict(element)
                out[key] = new
        return element if out is None else out
    if isinstance(element, list):
        items = [retarget(item, moved) for item in element]
        return element if all(a is b for a, b in zip(items, element, strict=True)) else items
    return element


def merge(built: Json, extra: Json) -> Json:
    """Merge kept extras into a freshly built element: kept list items go after the modelled ones."""
    out = dict(built)
    for key, value in extra.items():
        if key.startswith("_planbridge"):
            continue
        if key in out and isinstance(out[key], list) and isinstance(value, list):
            out[key] = [*out[key], *value]
        elif key not in out:
            out[key] = value
    return out
