"""The FHIR Provenance a push writes with what it writes, so the EHR knows who said what.

One `Provenance` per push that writes something, in the same transaction (the last one of a split push):

- `target`: every resource the push writes (by the entries' `urn:uuid` fullUrls, which resolve inside
  the transaction; a split push names those written by earlier transactions by their real `Type/id`);
- `recorded`: when the push was sent;
- `agent`: planbridge itself (`assembler`, a Device known by `{PLANBRIDGE_IDENTIFIER_BASE}/device|planbridge`),
  each team system whose events the push carries (`enterer`, a Device known by
  `{PLANBRIDGE_IDENTIFIER_BASE}/sender|<sender name>`) and each member those events named (`author`, by
  their FHIR reference: Patient, Practitioner or RelatedPerson, as linked for the plan). No display, no
  name: references and identifiers only.

The events a push carries are the plan's team changes in its history (plan_history) after the last one a
successful push carried (`sync_state.provenance_through`) up to the latest one when the push read the plan.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from mappings import codes
from mappings.reference_parse import local_reference, parse_reference
from mappings.refs import member_identifier
from service.domain.model import Member, Plan
from service.store.prepared import Prepared
from service.store.tables import PlanHistoryRow
from service.store.uow import UnitOfWork
from service.sync.push_bundle import person_key

PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
PLANBRIDGE_DEVICE = "planbridge"
PEOPLE = ("Patient", "Practitioner", "RelatedPerson")

_HISTORY = PlanHistoryRow.__table__
# The plan's changes after a sequence, oldest first: the last one's sequence is the plan's latest, and the
# team's among them are what a push carries (one statement, not a max() and a second read).
_SINCE = Prepared(
    sa.select(_HISTORY.c.sequence, _HISTORY.c.source, _HISTORY.c.sender, _HISTORY.c.members)
    .where(
        _HISTORY.c.plan_id == sa.bindparam("plan_id", type_=_HISTORY.c.plan_id.type),
        _HISTORY.c.sequence > sa.bindparam("after", type_=_HISTORY.c.sequence.type),
    )
    .order_by(_HISTORY.c.sequence)
)

Json = dict[str, Any]
Linked = dict[str, tuple[str, str, str | None]]  # local key -> (type, id, version), as fhir_links holds them


@dataclass(frozen=True)
class Carried:
    """The team changes a push carries: up to which history sequence, their senders and the members named."""

    through: int = 0
    senders: tuple[str, ...] = ()
    members: tuple[str, ...] = ()


def carried(uow: UnitOfWork, plan_id: str, pushed_through: int | None) -> Carried:
    """Return what the plan's history holds since the last push that carried changes (in an open uow)."""
    assert uow.session is not None
    after = pushed_through or 0
    through = after
    senders: list[str] = []
    members: list[str] = []
    for sequence, source, sender, named in _SINCE.all(uow.session, {"plan_id": plan_id, "after": after}):
        through = max(through, int(sequence))
        if source != "team":
            continue
        if sender and sender not in senders:
            senders.append(sender)
        members += [m for m in named or [] if m not in members]
    return Carried(through, tuple(senders), tuple(members))


def _device(base: str, kind: str, value: str, role: str) -> Json:
    return {
        "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": role}]},
        "who": {"type": "Device", "identifier": {"system": codes.identifier_system(base, kind), "value": value}},
    }


def _person_keys(plan: Plan, member: Member, base: str) -> set[str]:
    keys = {person_key(member_identifier(plan.id, member, base)[1]), person_key(codes.scoped_value(plan.id, member.id))}
    if member.identifier is not None:
        keys.add(person_key(member.identifier.value))
    return keys


def member_reference(
    plan: Plan,
    member: Member,
    entries: list[Json],
    links: Linked,
    patient_ref: str | None,
    base: str,
    key_of: Any,
    server_base: str | None = None,
) -> str | None:
    """Return the FHIR reference of a member: the Patient, their EHR reference, their linked resource, or the
    fullUrl of their entry in this push; None when the server has no resource for them.

    An EHR reference is named as `Type/id` when it is on the configured server (`server_base`, FHIR_BASE_URL),
    and as it is when it is an absolute reference to another server (or to any, with no `server_base`): the
    Provenance names the very resource the plan does, never our `Type/<its id>` (docs/references.md)."""
    if member.kind == "patient":
        if "patient" in links:
            rtype, fhir_id, _ = links["patient"]
            return f"{rtype}/{fhir_id}"
        if patient_ref:
            return local_reference(patient_ref, server_base)
        if plan.patient.fhir_reference:
            return local_reference(plan.patient.fhir_reference, server_base)
        return next((e["fullUrl"] for e in entries if e["resource"]["resourceType"] == "Patient"), None)
    parsed = parse_reference(member.fhir_reference)
    if member.fhir_reference and (parsed is None or parsed.kind != "contained"):
        return local_reference(member.fhir_reference, server_base)
    # a person contained in the CarePlan (`#pr1`) cannot be named from the Provenance (ref-1): by a link, if any
    keys = _person_keys(plan, member, base)
    for key in keys:
        if key in links:
            rtype, fhir_id, _ = links[key]
            return f"{rtype}/{fhir_id}"
    for entry in entries:
        resource = entry["resource"]
        if resource["resourceType"] in PEOPLE and entry.get("fullUrl") and key_of(resource, base) in keys:
            return str(entry["fullUrl"])
    return None


def provenance_entry(
    plan: Plan,
    entries: list[Json],
    what: Carried,
    links: Linked,
    patient_ref: str | None,
    base: str,
    now: datetime,
    key_of: Any,
    server_base: str | None = None,
) -> Json | None:
    """Return the transaction entry (`POST Provenance`) recording a push of `entries`, None for no entries.

    `key_of(resource, base)` names a resource as fhir_links does (service.sync.push.local_key); `server_base` is
    the configured FHIR base (FHIR_BASE_URL), to tell a member's reference on it from one on another server."""
    targets: list[str] = []
    for entry in entries:
        url = entry.get("fullUrl")
        if isinstance(url, str) and url and url not in targets:
            targets.append(url)
    if not targets:
        return None
    agents = [_device(base, "device", PLANBRIDGE_DEVICE, "assembler")]
    agents += [_device(base, "sender", sender, "enterer") for sender in what.senders]
    team = {m.id: m for m in plan.team}
    named: list[str] = []
    for member_id in what.members:
        member = team.get(member_id)
        ref = member_reference(plan, member, entries, links, patient_ref, base, key_of, server_base) if member else None
        if ref and ref not in named:
            named.append(ref)
    agents += [
        {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]}, "who": {"reference": ref}}
        for ref in named
    ]
    resource = {
        "resourceType": "Provenance",
        "target": [{"reference": url} for url in targets],
        "recorded": now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "agent": agents,
    }
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": resource,
        "request": {"method": "POST", "url": "Provenance"},
    }


def is_provenance(entry: Json) -> bool:
    """Tell whether a transaction entry is the push's Provenance."""
    return (entry.get("resource") or {}).get("resourceType") == "Provenance"
