"""References between the resources of one plan: built for output, resolved on input."""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from mappings import codes
from mappings.datatypes import Json, identifier_from_fhir, prune
from mappings.reference_parse import parse_reference
from service.domain.errors import MappingError
from service.domain.model import Member, Plan

_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_NOT_ID = re.compile(r"[^A-Za-z0-9\-.]+")
_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}  # a hex digit's top bits made 10


@functools.lru_cache(maxsize=8192)
def urn_for(system: str, value: str) -> str:
    """Return a stable urn:uuid for an identifier, so the same plan always gives the same Bundle.

    The RFC 4122 name-based (SHA-1, version 5) UUID of `system|value` in the URL namespace, exactly what
    `uuid.uuid5(uuid.NAMESPACE_URL, ...)` gives, built from the digest directly: building a UUID object and
    its string was most of a plan's references' cost, and a plan's references repeat on every change.
    """
    h = hashlib.sha1(_URL_NAMESPACE + f"{system}|{value}".encode(), usedforsecurity=False).hexdigest()
    # the digest's first 16 bytes, with version 5 in the 13th hex digit and the RFC 4122 variant in the 17th
    return f"urn:uuid:{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


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
    """Turns references found in FHIR resources back into plan members and goals.

    `people` (literal reference -> member) names the people the reader already knows by the reference the server
    gave them (a pull: the members a push wrote, by the plan's links): a reference to one of them whose resource
    the input does not carry (a pull includes only the CareTeam's participants) is that member, under the id,
    identifier and reference the plan has, not a new `practitioner-<id>` pinned to the literal reference.
    """

    def __init__(
        self,
        resources: dict[str, Json],
        patient_ref: str | None,
        identifier_base: str,
        people: dict[str, Member] | None = None,
    ) -> None:
        self.resources = resources  # keyed by every way they can be referenced ("Goal/1", fullUrl)
        self.patient_ref = patient_ref
        self.people = people or {}
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
        known = self.people.get(reference or "") if resource is None else None
        if known is not None and known.kind == codes.RESOURCE_MEMBER[rtype] and known.kind != "patient":
            return Member(
                id=known.id,
                kind=known.kind,
                name=ref.get("display"),
                identifier=known.identifier,
                fhir_reference=known.fhir_reference,
                in_team=in_team,
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
        """The member's own id when planbridge wrote its identifier, else `<type>-<the reference's last part>` made a
        FHIR id (a Bundle names its entries `urn:uuid:…`, and `Practitioner?identifier=s|v` is a reference too:
        their `:`, `?`, `|` would make an id no team event could name, which `plans import` refuses)."""
        if identifier is not None and identifier.system == self.member_system and "/" in identifier.value:
            own = identifier.value.rsplit("/", 1)[1]
            if _FHIR_ID.fullmatch(own):
                return own
        tail = (reference or "anonymous").rsplit("/", 1)[-1].lstrip("#")
        tail = _NOT_ID.sub("-", tail.removeprefix("urn:uuid:").removeprefix("urn:oid:")).strip("-.")[:40].strip("-.")
        return self._unused(f"{rtype.lower()}-{tail or 'anonymous'}")

    def _unused(self, base: str) -> str:
        candidate, n = base, 1
        while candidate in self.members:
            n += 1
            candidate = f"{base}-{n}"
        return candidate
