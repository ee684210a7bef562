"""What a push makes of a plan before it goes to the server (service.sync.push).

The digest that tells whether a plan changed since its last push, the key each resource is remembered
under in fhir_links, the document sent while conflicts are open, the Patient reference the Bundle
names, and the pinning of resources the server already holds to the version last seen (If-Match); and
`on_configured_server`, which tells at the door (an import) which references the push could never send.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from typing import Any

import orjson

from mappings import codes
from mappings.reference_parse import is_foreign, local_reference, parse_reference, relative_to
from service.domain import codec
from service.domain.errors import NotFound
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.settings import Settings
from service.store.db import ORJSON_AS_JSON_WOULD, refuse_for_orjson
from service.sync.deletions import on_server, prune_goal_references
from service.sync.merge import mask, strip_bookkeeping


class PatientNotOnServer(NotFound):
    """The patient's MRN matches no Patient and the configuration does not allow creating one."""

    code = "patient-not-found"


def bundle_digest(bundle: dict[str, Any]) -> str:
    """Return a stable digest of a Bundle, to tell whether a plan changed since its last push.

    The SHA-256 of `json.dumps(bundle, sort_keys=True, separators=(",", ":"))`, as every stored `pushed_hash`
    was computed: the text comes from orjson (~10x faster) whenever it is certain to be that very text, else
    from the json module (`_canonical_json`)."""
    return hashlib.sha256(_canonical_json(bundle)).hexdigest()


def bundle_digest_and_question(bundle: dict[str, Any]) -> tuple[str, bool]:
    """Return `bundle_digest(bundle)` and whether a `reference` of the Bundle may be conditional (`Type?params`,
    service.sync.conditional_refs), from the one text: False only when no string `reference` holds a `?`."""
    text = _canonical_json(bundle)
    return hashlib.sha256(text).hexdigest(), _questioned_reference(text)


_REFERENCE_KEY = b'"reference":"'  # as both orjson and the json module write a `reference` string (no spaces)


def _questioned_reference(text: bytes) -> bool:
    """Tell whether a `"reference":"..."` string of a Bundle's JSON text holds a `?` (JSON escapes none), or a
    backslash (an escape: then the answer is left to a walk of the Bundle itself). Only a key is followed by `":`
    in JSON text: inside a string a quote is escaped."""
    at = text.find(_REFERENCE_KEY)
    while at >= 0:
        start = at + len(_REFERENCE_KEY)
        end = text.find(b'"', start)
        value = text[start:end]
        if b"?" in value or b"\\" in value:
            return True
        at = text.find(_REFERENCE_KEY, end)
    return False


def _json_module_text(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# What orjson leaves to `default` (which refuses it, so the json module answers), as the JSON columns do.
_ORJSON_SORTED = ORJSON_AS_JSON_WOULD | orjson.OPT_SORT_KEYS
# orjson writes a float with an exponent as `1e-7` or `1e+16` (the json module: `1e-07`, `1e+16`), and one in
# [1e-5, 1e-4) as `0.00001` (json: `1e-05`); every other float is the same shortest repr both ways.
_FLOAT_MARKS = (b"e+", b"e-", b"0.0000")
_DIGITS = frozenset(b"0123456789")
_IN_A_NUMBER = frozenset(b"0123456789.-")
_BEFORE_A_VALUE = frozenset(b":,[")  # orjson writes no spaces: a value in an object or array follows one of these


def _canonical_json(value: Any) -> bytes:
    """Return `json.dumps(value, sort_keys=True, separators=(",", ":")).encode()`, byte for byte, for a JSON
    value (dicts with string keys, lists, strings, numbers, booleans, None; what `plan_to_bundle` builds).

    orjson writes it when its text cannot differ: only printable ASCII (json escapes every other character as
    `\\uXXXX`, DEL too, which orjson writes as it is; the control characters both escape alike), no `null`
    (orjson writes NaN and the infinities so, json as NaN and Infinity) and no float json writes otherwise
    (`_float_may_differ`). A `null`, or a float's look-alike, inside a string only costs the json module's time."""
    if not isinstance(value, dict | list):
        return _json_module_text(value)  # a lone scalar: not worth telling apart
    try:
        text = orjson.dumps(value, default=refuse_for_orjson, option=_ORJSON_SORTED)
    except TypeError:  # orjson.JSONEncodeError: beyond what orjson takes (an int over 64 bits, a non-str key...)
        return _json_module_text(value)
    if not text.isascii() or b"\x7f" in text or b"null" in text or _float_may_differ(text):
        return _json_module_text(value)
    return text


def _float_may_differ(text: bytes) -> bool:
    """Tell whether orjson's `text` (an object or array) may hold a float the json module writes otherwise: an
    exponent (`e+`, `e-` after a digit) or `0.0000` inside what may be a number (digits, `.` and `-` back to a
    `:`, `,` or `[`)."""
    for mark in _FLOAT_MARKS:
        at = text.find(mark)
        while at != -1:
            # text[0] is `{` or `[`: never part of a number, so neither look back runs off the start
            if mark == b"0.0000" or text[at - 1] in _DIGITS:
                start = at
                while text[start - 1] in _IN_A_NUMBER:
                    start -= 1
                if text[start - 1] in _BEFORE_A_VALUE:
                    return True
            at = text.find(mark, at + 1)
    return False


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
    and its MRN need not be known: `Patient/<id>` when it names a Patient of the configured server,
    the absolute reference as it is when it names another server's (only a plan pulled from a server
    that holds such references has one: an import is refused one, `on_configured_server`). Otherwise
    the Patient is found by the plan's MRN under the plan's `mrn_system` (default
    `PLANBRIDGE_MRN_SYSTEM`): the identifier as the EHR has it, never rewritten.
    Call it outside any database transaction: finding the Patient may take a request.
    """
    if plan.patient.fhir_reference:
        # The Bundle names the Patient by the reference itself (plan_to_bundle). On the configured server this
        # is its `Patient/id`; an absolute reference to another server's Patient stays as it is, never our
        # `Patient/<its id>` (docs/references.md).
        return local_reference(plan.patient.fhir_reference, settings.fhir_base_url), 0
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


# The keys under which a plan document holds FHIR references: a person's `fhir_reference` (and the patient's),
# a `Ref`'s `reference` (a goal's `addresses`...) and every Reference in the FHIR content kept as it came
# (`fhir_extra`, `careplan_extra`...).
REFERENCE_KEYS = ("reference", "fhir_reference")


def on_configured_server(plan: Plan, server_base: str | None) -> tuple[Plan, dict[str, str]]:
    """Return the plan with every absolute reference to a resource of the configured FHIR server (`server_base`,
    FHIR_BASE_URL) made relative, and every reference naming a resource of another server: plan path -> why.

    The push writes to one server. A reference to another server's resource is refused by HAPI by default
    (`HAPI-0507: Resource contains external reference to URL ... but this server is not configured to allow
    external references`) and by Medplum when it checks references on write, for ever: the plan would never
    be sent. So an import naming one is refused at the door, naming the field; one on our server is stored as
    the server names it (`Patient/123`). None is ever rebased onto ours (docs/references.md). Only the base
    is named in a refusal: a reference's id may be the EHR's key of a patient.
    """
    document = codec.to_dict(plan)
    rebased, foreign = references_on_configured_server(document, server_base)
    return (plan if rebased == document else codec.from_dict(Plan, rebased)), foreign


def references_on_configured_server(
    value: Any, server_base: str | None, path: str = "", key: str | None = None, held: Collection[str] = ()
) -> tuple[Any, dict[str, str]]:
    """Return `value` (part of a plan document, at plan path `path`; `key`: the key it is held under, when
    `value` is itself a reference string) with every absolute reference on the configured server made relative,
    and each reference naming another server's resource: plan path -> why. `value` is never changed.

    The check of `on_configured_server`, for any part of a plan: a conflict resolved to a value given by hand
    (`service.sync.engine.resolve_conflict`) is checked as an import is. A reference in `held` (one the plan or
    the server already holds: a pull keeps another server's reference the server accepted) is not refused."""
    foreign: dict[str, str] = {}

    def reference(item: str, where: str) -> str:
        if is_foreign(item, server_base) and item not in held:
            foreign[where] = _foreign_problem(item, server_base)
        return relative_to(item, server_base)

    def walk(item: Any, where: str) -> Any:
        if isinstance(item, list):
            return [walk(x, f"{where}[{i}]") for i, x in enumerate(item)]
        if not isinstance(item, dict):
            return item
        out = {}
        for k, x in item.items():
            at = f"{where}.{k}" if where else k
            out[k] = reference(x, at) if k in REFERENCE_KEYS and isinstance(x, str) else walk(x, at)
        return out

    rebased = reference(value, path) if key in REFERENCE_KEYS and isinstance(value, str) else walk(value, path)
    return rebased, foreign


def held_references(value: Any, key: str | None = None) -> set[str]:
    """Return every reference string in `value` (part of a plan document; `key` as for
    `references_on_configured_server`)."""
    if isinstance(value, str):
        return {value} if key in REFERENCE_KEYS else set()
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return set().union(*(held_references(x, k if isinstance(k, str) else None) for k, x in items))


def _foreign_problem(reference: str, server_base: str | None) -> str:
    parsed = parse_reference(reference.rstrip("/"))
    theirs = parsed.base if parsed is not None else None
    if not server_base:
        return (
            f"an absolute reference (to {theirs}) cannot be told to be on the FHIR server planbridge writes to: "
            "FHIR_BASE_URL is not set; name the resource by Type/id, or set FHIR_BASE_URL"
        )
    return (
        f"names a resource on another FHIR server ({theirs}), not on {server_base.rstrip('/')}/ where the plan is "
        "written, which refuses such a reference unless configured to allow external ones (HAPI-0507); name a "
        "resource on the configured server (Type/id)"
    )
