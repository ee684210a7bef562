"""References between the resources of one plan: built for output, resolved on input."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Literal

from mappings import codes
from mappings.datatypes import Json, identifier_from_fhir, prune, ref_from_fhir, ref_to_fhir
from service.domain.errors import MappingError
from service.domain.model import Member, Plan
from service.domain.types import Ref

_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes


@functools.lru_cache(maxsize=8192)
def urn_for(system: str, value: str) -> str:
    """Return a stable urn:uuid for an identifier, so the same plan always gives the same Bundle.

    The RFC 4122 name-based (SHA-1, version 5) UUID of `system|value` in the URL namespace, exactly what
    `uuid.uuid5(uuid.NAMESPACE_URL, ...)` gives, built from the digest directly: building a UUID object and
    its string was most of a plan's references' cost, and a plan's references repeat on every change.
    """
    digest = bytearray(hashlib.sha1(_URL_NAMESPACE + f"{system}|{value}".encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


RefKind = Literal["relative", "absolute", "urn", "contained"]
LITERAL_KINDS: tuple[RefKind, ...] = ("relative", "absolute")

# A literal reference (https://hl7.org/fhir/R4/references.html#literal):
#   ((http|https)://([A-Za-z0-9\-\\\.\:\%\$]*\/)+)?(Account|...)\/[A-Za-z0-9\-\.]{1,64}(\/_history\/[A-Za-z0-9\-\.]{1,64})?
# read here as `[base/]Type/id[/_history/vid]`, whole (not searched for inside a longer string). The shape is
# taken as the spec gives it; what each part may contain is looser here (a type is any resource-type-shaped
# name, an id or version any segment, the base any http(s) URL), and `ParsedRef.conforms` tells whether the
# parts keep R4's own rules: a reference an EHR sends with an over-long id or a `fhir_r4` base still names
# its type, which is what most callers need to know.
_SEGMENT = r"[^/?]+"
_LITERAL = re.compile(
    rf"(?P<base>(?i:https?)://{_SEGMENT}(?:/{_SEGMENT})*?/)?"
    rf"(?P<type>[A-Z][A-Za-z]+)/(?P<id>{_SEGMENT})(?:/_history/(?P<version>{_SEGMENT}))?"
)
_R4_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_R4_BASE = re.compile(r"(?:http|https)://(?:[A-Za-z0-9\-\\.:%$]*/)+")
_URN = re.compile(r"urn:(?:uuid|oid):(?P<id>.+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ParsedRef:
    """A `Reference.reference` taken apart (https://hl7.org/fhir/R4/references.html).

    kind: `relative` (`Patient/123`, `Patient/123/_history/2`), `absolute` (`https://server/fhir/Patient/123`),
    `urn` (`urn:uuid:...`, `urn:oid:...`: a Bundle entry's fullUrl) or `contained` (`#p1`; `#` alone: the
    containing resource). `type` and `version` are set for literal references only; `id` is the resource id
    (literal), the uuid/oid (urn) or the element id (contained, None for `#`); `base` is an absolute
    reference's service base, with its trailing slash (`https://server/fhir/`).
    """

    reference: str
    kind: RefKind
    type: str | None = None
    id: str | None = None
    version: str | None = None
    base: str | None = None

    @property
    def is_literal(self) -> bool:
        """Tell whether this is `[base/]Type/id[/_history/vid]`: a resource a server holds."""
        return self.kind in LITERAL_KINDS

    @property
    def literal(self) -> tuple[str, str, str | None] | None:
        """Return (type, id, version) for a literal reference, None for any other."""
        if self.type is None or self.id is None or not self.is_literal:
            return None
        return self.type, self.id, self.version

    @property
    def type_id(self) -> str | None:
        """Return `Type/id` (no base, no version) for a literal reference, None for any other."""
        return f"{self.type}/{self.id}" if self.is_literal else None

    @property
    def conforms(self) -> bool:
        """Tell whether a literal reference keeps R4's rules for its base, id and version (the spec's regex)."""
        if not self.is_literal:
            return True
        return (
            _R4_ID.fullmatch(self.id or "") is not None
            and (self.version is None or _R4_ID.fullmatch(self.version) is not None)
            and (self.base is None or _R4_BASE.fullmatch(self.base) is not None)
        )


def parse_reference(reference: object) -> ParsedRef | None:
    """Return a reference taken apart, None for anything that is none of the four forms (not a string,
    empty, a conditional reference `Patient?identifier=...`, `Patient/1/extra`, `patient/1`, `urn:isbn:...`).

    A literal reference is read whole: `Patient/1/` (trailing slash) or `/Patient/1` are not references;
    a caller reading a server's Location strips a trailing slash first.
    """
    if not isinstance(reference, str) or not reference:
        return None
    if reference.startswith("#"):
        return ParsedRef(reference, "contained", id=reference[1:] or None)
    if reference[:4].lower() == "urn:":
        urn = _URN.fullmatch(reference)
        return ParsedRef(reference, "urn", id=urn.group("id")) if urn else None
    found = _LITERAL.fullmatch(reference)
    if found is None:
        return None
    base = found.group("base")
    return ParsedRef(
        reference,
        "absolute" if base else "relative",
        type=found.group("type"),
        id=found.group("id"),
        version=found.group("version"),
        base=base,
    )


def local_reference(reference: str) -> str:
    """Return `Type/id` for a literal reference (its base, version and any trailing slash dropped), any other
    reference (urn:uuid, #contained, conditional, malformed) as it is."""
    parsed = parse_reference(reference.rstrip("/"))
    return (parsed.type_id if parsed is not None else None) or reference


@dataclass
class Refs:
    """How each part of a plan is referenced from the resources being built."""

    identifier_base: str
    patient: str
    patient_display: str | None = None
    patient_extra: Json = field(default_factory=dict)
    careteam: str | None = None
    careplan: str | None = None
    members: dict[str, str] = field(default_factory=dict)
    member_displays: dict[str, str] = field(default_factory=dict)
    goals: dict[str, str] = field(default_factory=dict)
    check_ins: dict[str, str] = field(default_factory=dict)  # "{goal id}/{id}" of check-ins and ratings

    def subject(self) -> Json:
        """Return the Reference to the patient, with what the EHR's own reference carried besides (kept)."""
        built = prune({"reference": self.patient, "display": self.patient_display})
        return {**built, **{k: v for k, v in self.patient_extra.items() if k not in built}}

    def member(self, member_id: str, path: str) -> Json:
        """Return the Reference to a team member; an unknown member is a mapping error naming `path`."""
        if member_id not in self.members:
            raise MappingError(f"{path} names {member_id!r}, who is not in the team", errors={path: member_id})
        return prune({"reference": self.members[member_id], "display": self.member_displays.get(member_id)})

    def goal(self, goal_id: str, path: str) -> Json:
        """Return the Reference to one of the plan's goals."""
        if goal_id not in self.goals:
            raise MappingError(f"{path} names unknown goal {goal_id!r}", errors={path: goal_id})
        return {"reference": self.goals[goal_id]}


def member_identifier(plan_id: str, member: Member, base: str) -> tuple[str, str]:
    """Return (system, value) identifying a member's resource: theirs if they have one, else ours."""
    if member.identifier is not None:
        return member.identifier.system, member.identifier.value
    return codes.identifier_system(base, "member"), codes.scoped_value(plan_id, member.id)


CONTAINED = "_planbridge_contained"  # in a *_extra: the element id under which the resource was contained
IMPLIED = (
    "_planbridge_implied"  # in a member's fhir_extra: on the plan's team, but not a participant of the EHR's CareTeam
)


# in a goal's fhir_extra / careteam_extra: what the CarePlan's reference to it carried besides `reference`
# (display, type, extension...), written back beside it
REFERENCE = "_planbridge_reference"


def reference_extra(extra: Json) -> Json:
    """Return what the CarePlan's reference to a goal or the CareTeam carried besides `reference` (kept)."""
    found = extra.get(REFERENCE)
    return found if isinstance(found, dict) else {}


def contained_id(extra: Json) -> str | None:
    """Return the id a goal or CareTeam had inside `CarePlan.contained`, if the EHR sent it contained."""
    found = extra.get(CONTAINED)
    return found if isinstance(found, str) and found else None


def refs_for_bundle(plan: Plan, base: str, patient_ref: str) -> Refs:
    """Return references for a transaction Bundle: urn:uuids for what the Bundle carries."""
    refs = Refs(
        identifier_base=base,
        patient=patient_ref,
        patient_display=plan.patient.display_name,
        patient_extra=plan.patient.fhir_extra or {},
    )
    refs.careteam = urn_for(codes.identifier_system(base, "careteam"), plan.id)
    if contained_id(plan.careteam_extra):
        refs.careteam = f"#{contained_id(plan.careteam_extra)}"
    refs.careplan = urn_for(codes.identifier_system(base, "plan"), plan.id)
    for m in plan.team:
        if m.kind == "patient":
            refs.members[m.id] = patient_ref
        elif m.fhir_reference:
            refs.members[m.id] = m.fhir_reference
        else:
            refs.members[m.id] = urn_for(*member_identifier(plan.id, m, base))
        if m.name:
            refs.member_displays[m.id] = m.name
    goal_system = codes.identifier_system(base, "goal")
    checkin_system = codes.identifier_system(base, "checkin")
    for g in plan.goals:
        refs.goals[g.id] = urn_for(goal_system, codes.goal_identifier_value(plan.id, g.id))
        if contained_id(g.fhir_extra):
            refs.goals[g.id] = f"#{contained_id(g.fhir_extra)}"
        for c in [*g.check_ins, *g.ratings]:  # a rating is an Observation identified like a check-in
            refs.check_ins[f"{g.id}/{c.id}"] = urn_for(checkin_system, codes.scoped_value(plan.id, g.id, c.id))
    return refs


def _named_type(reference: str | None) -> str:
    """Return the type a reference to a person names: a literal reference's (`[base/]Type/id[/_history/v]`),
    else what precedes its first slash (`#pr1`, a urn:uuid: no type a person has)."""
    parsed = parse_reference(reference)
    return parsed.type if parsed is not None and parsed.type else (reference or "").split("/")[0]


class Resolver:
    """Turns references found in FHIR resources back into plan members and goals."""

    def __init__(self, resources: dict[str, Json], patient_ref: str | None, identifier_base: str) -> None:
        self.resources = resources  # keyed by every way they can be referenced ("Goal/1", fullUrl)
        self.patient_ref = patient_ref
        self.member_system = codes.identifier_system(identifier_base, "member")
        self.members: dict[str, Member] = {}
        self.member_ids: dict[str, str] = {}

    def lookup(self, reference: str | None) -> Json | None:
        """Return the resource a reference points at, if the input carried it."""
        return self.resources.get(reference or "")

    def member_for(self, ref: Json, in_team: bool = False, member_id: str | None = None) -> str:
        """Return the member id for a reference to a person, registering the person on first sight."""
        key = self._key(ref)
        if key in self.member_ids:
            member = self.members[self.member_ids[key]]
            member.in_team = member.in_team or in_team
            return member.id
        member = self._new_member(ref, in_team)
        if member_id is not None and member_id not in self.members:
            member.id = member_id
        if member.id in self.members:  # two people given the same id (duplicated element ids or identifiers)
            member.id = self._unused(member.id)
        self.member_ids[key] = member.id
        self.members[member.id] = member
        return member.id

    def known(self, ref: Json) -> str | None:
        """Return the member id of the person a reference names, if already registered."""
        return self.member_ids.get(self._key(ref))

    def _key(self, ref: Json) -> str:
        """One key per person: a resource the input carries is one person however it is referenced
        (`Practitioner/1`, its fullUrl, a `urn:uuid:`), else the reference as written."""
        resource = self.lookup(ref.get("reference"))
        if resource is not None:
            return f"@{id(resource)}"
        return ref.get("reference") or repr(sorted((k, str(v)) for k, v in ref.items()))

    def is_person(self, ref: Json) -> bool:
        """Tell whether a reference points at a Patient, Practitioner or RelatedPerson (a possible member)."""
        reference = ref.get("reference")
        if reference is not None and reference == self.patient_ref:
            return True
        resource = self.lookup(reference)
        rtype = (resource or {}).get("resourceType") or ref.get("type") or _named_type(reference)
        return rtype in codes.RESOURCE_MEMBER

    def _new_member(self, ref: Json, in_team: bool) -> Member:
        reference = ref.get("reference")
        if reference is not None and reference == self.patient_ref:
            return Member(id="patient", kind="patient", in_team=in_team, name=ref.get("display"))
        resource = self.lookup(reference)
        rtype = (resource or {}).get("resourceType") or ref.get("type") or _named_type(reference)
        if rtype not in codes.RESOURCE_MEMBER:
            raise MappingError(
                f"a reference to {rtype or 'an unknown type'} cannot name a person", errors={"reference": reference}
            )
        idents = (resource or {}).get("identifier") or ([ref["identifier"]] if "identifier" in ref else [])
        usable = [i for i in idents if i.get("system") and i.get("value")]  # a conditional create needs both
        identifier = identifier_from_fhir(usable[0]) if usable else None
        member_id = self._member_id(rtype, reference, identifier)
        if identifier is not None and identifier.system == self.member_system:
            identifier = None  # ours, derived from the member id: not part of the plan
        # A person known by an identifier is found again by it (conditional create); only someone
        # with no identifier is pinned to the literal reference the server gave. A person contained
        # in the CarePlan ("#pr1") stays contained: always named by that reference.
        literal = reference if reference and not reference.startswith("urn:") and not usable else None
        if reference and reference.startswith("#"):
            literal = reference
        return Member(
            id=member_id,
            kind=codes.RESOURCE_MEMBER[rtype],
            name=ref.get("display"),
            identifier=identifier,
            fhir_reference=literal,
            in_team=in_team,
        )

    def _member_id(self, rtype: str, reference: str | None, identifier: Any) -> str:
        if identifier is not None and identifier.system == self.member_system and "/" in identifier.value:
            return identifier.value.rsplit("/", 1)[1]
        return self._unused(f"{rtype.lower()}-{(reference or 'anonymous').rsplit('/', 1)[-1].lstrip('#')[:40]}")

    def _unused(self, base: str) -> str:
        candidate, n = base, 1
        while candidate in self.members:
            n += 1
            candidate = f"{base}-{n}"
        return candidate


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
