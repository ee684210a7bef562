"""Checks fhir.resources does not make: required value-set bindings and R4 invariants.

fhir.resources validates structure and cardinality only (FHIR-NOTES.md); these are the required
bindings of the resources planbridge reads and writes (https://hl7.org/fhir/R4/terminologies.html#required)
and the invariants gol-1, cpl-3, ctm-1 and sqty-1 (a SimpleQuantity, as in Range.low/high, has no
comparator: https://hl7.org/fhir/R4/datatypes.html#SimpleQuantity). Each problem names its element.

Covered: Goal.lifecycleStatus, goal-acceptance status, CarePlan.status / intent /
activity.detail.status / kind, CareTeam.status, Observation.status, Bundle.type /
entry.request.method / entry.search.mode, the gender of Patient, Practitioner and RelatedPerson,
Patient.link.type, a resource's identifier.use and text.status, and Quantity.comparator wherever a
Quantity, Duration, Range or Ratio sits in a Goal target, an Observation value (and its components)
or a CarePlan activity detail. Also the invariants a FHIR server checks on what planbridge maps
(the local server in fhir-server/ refuses each with 422): bdl-1 to bdl-12 but bdl-6, dom-2, dom-4
and dom-5 (what a contained resource may not carry), obs-3, obs-6 and pat-1.
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


OBSERVATION_STATUSES = (
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
)
CARETEAM_STATUSES = ("proposed", "active", "suspended", "inactive", "entered-in-error")
GENDERS = ("male", "female", "other", "unknown")
PATIENT_LINK_TYPES = ("replaced-by", "replaces", "refer", "seealso")
IDENTIFIER_USES = ("usual", "official", "temp", "secondary", "old")
NARRATIVE_STATUSES = ("generated", "extensions", "additional", "empty")
BUNDLE_TYPES = (
    "document",
    "message",
    "transaction",
    "transaction-response",
    "batch",
    "batch-response",
    "history",
    "searchset",
    "collection",
)
HTTP_VERBS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
SEARCH_MODES = ("match", "include", "outcome")


def _code(value: object, allowed: tuple[str, ...], path: str) -> list[Issue]:
    if value is None or value in allowed:
        return []
    return [Issue(path, f"{value!r} is not in the required value set ({', '.join(allowed)})", code="code-invalid")]


def _quantity(quantity: Json | None, path: str) -> list[Issue]:
    """Quantity.comparator (also Duration's): < | <= | >= | >."""
    if quantity is None or "comparator" not in quantity:
        return []
    return _code(quantity["comparator"], model.COMPARATORS, f"{path}.comparator")


def _simple_quantity(quantity: Json | None, path: str) -> list[Issue]:
    """sqty-1: a SimpleQuantity (Range.low/high, CarePlan.activity.detail.quantity...) has no comparator."""
    if quantity is None or "comparator" not in quantity:
        return []
    return [Issue(f"{path}.comparator", "sqty-1: a SimpleQuantity has no comparator", code="invariant")]


def _range(data: Json | None, path: str) -> list[Issue]:
    if data is None:
        return []
    return _simple_quantity(data.get("low"), f"{path}.low") + _simple_quantity(data.get("high"), f"{path}.high")


def _values(element: Json, prefix: str, path: str) -> list[Issue]:
    """Check the Quantity, Range and Ratio choices of a value[x] (or detail[x]) element."""
    issues = _quantity(element.get(f"{prefix}Quantity"), f"{path}.{prefix}Quantity")
    issues += _range(element.get(f"{prefix}Range"), f"{path}.{prefix}Range")
    ratio = element.get(f"{prefix}Ratio")
    if ratio is not None:
        issues += _quantity(ratio.get("numerator"), f"{path}.{prefix}Ratio.numerator")
        issues += _quantity(ratio.get("denominator"), f"{path}.{prefix}Ratio.denominator")
    return issues


def _common(resource: Json, rtype: str) -> list[Issue]:
    """Bindings every mapped resource shares: identifier.use and text.status; and the contained rules dom-2, -4, -5."""
    issues = []
    for i, ident in enumerate(resource.get("identifier", ())):
        if "use" in ident:
            issues += _code(ident["use"], IDENTIFIER_USES, f"{rtype}.identifier[{i}].use")
    if "text" in resource:
        issues += _code(resource["text"].get("status"), NARRATIVE_STATUSES, f"{rtype}.text.status")
    for i, inner in enumerate(resource.get("contained", ())):
        issues += _contained(inner, f"{rtype}.contained[{i}]")
    return issues


def _contained(inner: Json, path: str) -> list[Issue]:
    """dom-2, dom-4, dom-5 (https://hl7.org/fhir/R4/domainresource.html#invs): a contained resource holds no
    contained resources, no meta.versionId or meta.lastUpdated, and no security labels."""
    issues = []
    if "contained" in inner:
        issues.append(
            Issue(f"{path}.contained", "dom-2: a contained resource holds no contained resources", code="invariant")
        )
    meta = inner.get("meta") or {}
    for key in ("versionId", "lastUpdated"):
        if key in meta:
            issues.append(
                Issue(f"{path}.meta.{key}", f"dom-4: a contained resource has no meta.{key}", code="invariant")
            )
    if "security" in meta:
        issues.append(
            Issue(f"{path}.meta.security", "dom-5: a contained resource has no security labels", code="invariant")
        )
    return issues


def _goal(resource: Json, types: dict[str, str]) -> list[Issue]:
    issues = _code(resource.get("lifecycleStatus"), model.GOAL_LIFECYCLE_STATUSES, "Goal.lifecycleStatus")
    issues += _common(resource, "Goal")
    for i, target in enumerate(resource.get("target", [])):
        issues += _values(target, "detail", f"Goal.target[{i}]")
        issues += _quantity(target.get("dueDuration"), f"Goal.target[{i}].dueDuration")
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
    issues += _common(resource, "CarePlan")
    for i, activity in enumerate(resource.get("activity", [])):
        path = f"CarePlan.activity[{i}]"
        if "reference" in activity and "detail" in activity:
            issues.append(Issue(path, "cpl-3: provide a reference or detail, not both", code="invariant"))
        detail = activity.get("detail", {})
        issues += _code(detail.get("status"), model.STEP_STATUSES, f"{path}.detail.status")
        issues += _code(detail.get("kind"), CAREPLAN_ACTIVITY_KINDS, f"{path}.detail.kind")
        issues += _simple_quantity(detail.get("dailyAmount"), f"{path}.detail.dailyAmount")
        issues += _simple_quantity(detail.get("quantity"), f"{path}.detail.quantity")
    return issues


def _observation(resource: Json, types: dict[str, str]) -> list[Issue]:
    issues = _code(resource.get("status"), OBSERVATION_STATUSES, "Observation.status")
    issues += _common(resource, "Observation")
    issues += _values(resource, "value", "Observation")
    if "dataAbsentReason" in resource and any(k.startswith("value") for k in resource):
        issues.append(
            Issue(
                "Observation.dataAbsentReason", "obs-6: dataAbsentReason only when there is no value", code="invariant"
            )
        )
    for i, component in enumerate(resource.get("component", ())):
        issues += _values(component, "value", f"Observation.component[{i}]")
    for i, reference_range in enumerate(resource.get("referenceRange", ())):
        issues += _range(reference_range, f"Observation.referenceRange[{i}]")
        if not any(k in reference_range for k in ("low", "high", "text")):
            issues.append(
                Issue(
                    f"Observation.referenceRange[{i}]",
                    "obs-3: a reference range has at least a low, a high or a text",
                    code="invariant",
                )
            )
    return issues


def _person(resource: Json, types: dict[str, str]) -> list[Issue]:
    """Patient, Practitioner, RelatedPerson: gender (and a Patient's contacts and links)."""
    rtype = resource["resourceType"]
    issues = _code(resource.get("gender"), GENDERS, f"{rtype}.gender")
    issues += _common(resource, rtype)
    for i, contact in enumerate(resource.get("contact", ()) if rtype == "Patient" else ()):
        issues += _code(contact.get("gender"), GENDERS, f"Patient.contact[{i}].gender")
        if not any(k in contact for k in ("name", "telecom", "address", "organization")):
            issues.append(
                Issue(
                    f"Patient.contact[{i}]",
                    "pat-1: a contact has a name, a telecom, an address or an organization",
                    code="invariant",
                )
            )
    for i, link in enumerate(resource.get("link", ()) if rtype == "Patient" else ()):
        issues += _code(link.get("type"), PATIENT_LINK_TYPES, f"Patient.link[{i}].type")
    return issues


def _bundle(resource: Json, types: dict[str, str]) -> list[Issue]:
    """Bundle.type, entry.request.method and entry.search.mode, and the invariants bdl-1 to bdl-12
    (https://hl7.org/fhir/R4/bundle.html#invs) but bdl-6 (not the entries' resources)."""
    kind = resource.get("type")
    issues = _code(kind, BUNDLE_TYPES, "Bundle.type")
    if "total" in resource and kind not in ("searchset", "history"):
        issues.append(Issue("Bundle.total", "bdl-1: total only when a search or history", code="invariant"))
    seen: set[tuple[str, object]] = set()
    for i, entry in enumerate(resource.get("entry", ())):
        path = f"Bundle.entry[{i}]"
        if "request" in entry:
            issues += _code(entry["request"].get("method"), HTTP_VERBS, f"{path}.request.method")
        if "search" in entry:
            issues += _code(entry["search"].get("mode"), SEARCH_MODES, f"{path}.search.mode")
        issues += _entry_invariants(entry, kind, path)
        full_url, inner = entry.get("fullUrl"), entry.get("resource")
        if isinstance(full_url, str) and kind != "history":
            version = ((inner.get("meta") or {}) if isinstance(inner, dict) else {}).get("versionId")
            if (full_url, version) in seen:
                issues.append(
                    Issue(f"{path}.fullUrl", f"bdl-7: {full_url} is the fullUrl of an earlier entry", code="invariant")
                )
            seen.add((full_url, version))
    return issues + _bundle_kind_invariants(resource, kind)


def _entry_invariants(entry: Json, kind: object, path: str) -> list[Issue]:
    """bdl-2, bdl-3, bdl-4, bdl-5 and bdl-8 of one Bundle.entry."""
    issues = []
    if "search" in entry and kind != "searchset":
        issues.append(Issue(f"{path}.search", "bdl-2: entry.search only when a search", code="invariant"))
    if ("request" in entry) != (kind in ("batch", "transaction", "history")):
        issues.append(
            Issue(
                f"{path}.request",
                "bdl-3: entry.request is mandatory for batch, transaction and history, otherwise prohibited",
                code="invariant",
            )
        )
    if ("response" in entry) != (kind in ("batch-response", "transaction-response", "history")):
        issues.append(
            Issue(
                f"{path}.response",
                "bdl-4: entry.response is mandatory for batch-response, transaction-response and history, "
                "otherwise prohibited",
                code="invariant",
            )
        )
    if not any(k in entry for k in ("resource", "request", "response")):
        issues.append(Issue(path, "bdl-5: an entry has a resource, a request or a response", code="invariant"))
    if "/_history/" in str(entry.get("fullUrl", "")):
        issues.append(Issue(f"{path}.fullUrl", "bdl-8: fullUrl is not a version-specific reference", code="invariant"))
    return issues


def _bundle_kind_invariants(resource: Json, kind: object) -> list[Issue]:
    """bdl-9 to bdl-12: what a document and a message need."""
    issues = []
    entries = resource.get("entry") or [{}]
    first = entries[0].get("resource") if isinstance(entries[0], dict) else None
    first_type = first.get("resourceType") if isinstance(first, dict) else None
    if kind == "document":
        identifier = resource.get("identifier") or {}
        if not (identifier.get("system") and identifier.get("value")):
            issues.append(
                Issue(
                    "Bundle.identifier",
                    "bdl-9: a document has an identifier with a system and a value",
                    code="invariant",
                )
            )
        if "timestamp" not in resource:
            issues.append(Issue("Bundle.timestamp", "bdl-10: a document has a timestamp", code="invariant"))
        if first_type != "Composition":
            issues.append(
                Issue("Bundle.entry[0]", "bdl-11: a document's first resource is a Composition", code="invariant")
            )
    if kind == "message" and first_type != "MessageHeader":
        issues.append(
            Issue("Bundle.entry[0]", "bdl-12: a message's first resource is a MessageHeader", code="invariant")
        )
    return issues


def _member_type(member: Json, types: dict[str, str]) -> str | None:
    """Return the resource type a Reference points at: its `type`, the Bundle entry it names, or its literal form."""
    reference = str(member.get("reference", ""))
    if member.get("type") or reference in types:
        return member.get("type") or types[reference]
    literal = _LITERAL.search(reference)
    return literal.group(1) if literal else None  # a urn:uuid or contained resource not in the Bundle: unknown


def _careteam(resource: Json, types: dict[str, str]) -> list[Issue]:
    issues = _code(resource.get("status"), CARETEAM_STATUSES, "CareTeam.status")
    issues += _common(resource, "CareTeam")
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
    check = _CHECKS.get(resource.get("resourceType", ""))
    return check(resource, types or {}) if check else []


_CHECKS = {
    "Goal": _goal,
    "CarePlan": _careplan,
    "CareTeam": _careteam,
    "Observation": _observation,
    "Patient": _person,
    "Practitioner": _person,
    "RelatedPerson": _person,
    "Bundle": _bundle,
}


# ---- placeholders no entry resolves --------------------------------------------------------------------------
#
# A `urn:uuid:` / `urn:oid:` reference in a Bundle names the entry with that fullUrl; a FHIR server refuses a
# transaction holding one no entry has (HAPI-0541 "Unable to satisfy placeholder ID ...", whatever element holds
# it; the local server in fhir-server/ does the same). The intake runs this on the Bundle of every event's plan:
# one walk of the entries' resources looking only at `reference` strings that start with "urn:", and element
# paths worked out only when one dangles.

_DICT, _LIST = dict, list


def _dangling(node: Json, full_urls: set[object], found: list[str]) -> None:
    for key, value in node.items():
        kind = value.__class__
        if kind is str:
            if key == "reference" and value[:4] == "urn:" and value not in full_urls:
                found.append(value)
        elif kind is _DICT:
            _dangling(value, full_urls, found)
        elif kind is _LIST:
            for item in value:
                if item.__class__ is _DICT:
                    _dangling(item, full_urls, found)


def _dangling_paths(value: object, path: str, full_urls: set[object], out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item[:4] == "urn:" and item not in full_urls:
                out[f"{path}.reference"] = (
                    f"{item} is the fullUrl of no entry of the Bundle: a FHIR server refuses the transaction "
                    "(unable to satisfy the placeholder)"
                )
            elif isinstance(item, dict | list):
                _dangling_paths(item, f"{path}.{key}", full_urls, out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _dangling_paths(item, f"{path}[{i}]", full_urls, out)


def unresolved_placeholders(bundle: Json) -> dict[str, str]:
    """Return {element path: problem} for each `urn:` reference in the Bundle's entries' resources that is the
    fullUrl of no entry (`Bundle.entry[3].resource.addresses[0].reference`); empty when every one resolves."""
    entries = bundle.get("entry")
    if entries.__class__ is not _LIST:
        return {}
    full_urls = {entry.get("fullUrl") for entry in entries if entry.__class__ is _DICT}
    found: list[str] = []
    for entry in entries:
        resource = entry.get("resource") if entry.__class__ is _DICT else None
        if resource.__class__ is _DICT:
            _dangling(resource, full_urls, found)
    if not found:
        return {}
    out: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            _dangling_paths(entry["resource"], f"Bundle.entry[{i}].resource", full_urls, out)
    return out
