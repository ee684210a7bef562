"""FHIR R4 references taken apart: `[base/]Type/id[/_history/vid]`, `urn:uuid:`/`urn:oid:`, `#contained`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

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
