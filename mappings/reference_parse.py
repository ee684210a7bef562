"""FHIR R4 references taken apart: `[base/]Type/id[/_history/vid]`, `urn:uuid:`/`urn:oid:`, `#contained`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

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


def _origin_and_path(base: str) -> tuple[str, str, str] | None:
    """Return (scheme, host[:port], path ending in `/`) of an http(s) base, the scheme and host lower-cased and
    a default port (80 for http, 443 for https) dropped; None for anything that is not an http(s) URL."""
    parts = urlsplit(base.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname.lower()
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return scheme, host, parts.path.rstrip("/") + "/"


def same_server(base: str | None, server_base: str | None) -> bool:
    """Tell whether an absolute reference's `base` is `server_base` (the configured FHIR base, FHIR_BASE_URL).

    As RFC 3986 compares URLs: the scheme and host without regard to case, a default port the same as none,
    the path exactly (`/fhir/` is not `/FHIR/`); a trailing slash on either is ignored. `http` and `https` are
    different servers. False when either is None or not an http(s) URL.
    """
    if not base or not server_base:
        return False
    ours, theirs = _origin_and_path(server_base), _origin_and_path(base)
    return ours is not None and ours == theirs


def is_foreign(reference: object, server_base: str | None) -> bool:
    """Tell whether a reference is an absolute literal reference to a resource on another server than the one at
    `server_base` (every absolute reference when `server_base` is None: none can be told to be ours)."""
    parsed = parse_reference(reference.rstrip("/") if isinstance(reference, str) else reference)
    return parsed is not None and parsed.kind == "absolute" and not same_server(parsed.base, server_base)


def relative_to(reference: str, server_base: str | None) -> str:
    """Return a reference as the server at `server_base` names it: an absolute literal reference on that server
    without its base (`Patient/1`, `Patient/1/_history/2`, as HAPI stores it); any other reference as it is.

    An absolute reference on another server is never rebased onto ours: `https://other.example/fhir/Patient/1`
    is not our `Patient/1` (which may not exist, or be someone else)."""
    parsed = parse_reference(reference.rstrip("/"))
    if parsed is None or parsed.kind != "absolute" or not same_server(parsed.base, server_base):
        return reference
    return f"{parsed.type_id}/_history/{parsed.version}" if parsed.version else str(parsed.type_id)


def local_reference(reference: str, server_base: str | None = None) -> str:
    """Return `Type/id` for a literal reference to a resource of the server at `server_base`: a relative one, or
    an absolute one on that server (base, version and any trailing slash dropped).

    Any other reference is returned as it is: one on another server (or any absolute one when `server_base` is
    None: it cannot be told to be ours), which names that server's resource and never `Type/id` of ours, and
    a urn:uuid, #contained, conditional or malformed one."""
    parsed = parse_reference(reference.rstrip("/"))
    if parsed is None or not parsed.is_literal:
        return reference
    if parsed.kind == "absolute" and not same_server(parsed.base, server_base):
        return reference
    return str(parsed.type_id)
