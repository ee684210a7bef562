"""The links of a pulled plan (service.sync.pull): which pulled resources are its parts, and at which version.

A part is keyed as a push keys the resource it builds for it; the EHR's resources without planbridge's
identifier belong to a plan only when its CarePlan reaches them. Versions are recorded on every read,
and links to resources the server no longer has are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from mappings.refs import member_identifier
from service.domain.model import Member, Plan
from service.store.tables import FhirLinkRow
from service.sync.push import local_key
from service.sync.push_bundle import person_key

PEOPLE = ("Practitioner", "RelatedPerson")


def known_people(plan: Plan, links: Iterable[FhirLinkRow], base: str) -> dict[str, Member]:
    """Return literal reference (`Practitioner/5`) -> member, for the plan's people the server holds as the plan knows
    them: a member known by an identifier (theirs, else planbridge's `{base}/member`) whose person a push linked
    (`person:<value>`), and a member pinned to a literal reference. A reference two members would claim is left
    out. A pull reads only the CareTeam's participants; with these, a reference to anyone else the plan names (a
    surgeon who wrote a goal's note) reads back as that member, not as a new `practitioner-<id>`."""
    by_key: dict[str, list[FhirLinkRow]] = {}
    for link in links:
        if link.resource_type in PEOPLE:
            by_key.setdefault(link.local_key, []).append(link)
    claims: dict[str, list[Member]] = {}
    for member in plan.team:
        if member.kind == "patient":
            continue
        refs = {
            f"{link.resource_type}/{link.fhir_id}"
            for link in by_key.get(person_key(member_identifier(plan.id, member, base)[1]), [])
        }
        if member.fhir_reference and not member.fhir_reference.startswith(("#", "urn:")):
            refs.add(member.fhir_reference)
        for ref in refs:
            claims.setdefault(ref, []).append(member)
    return {ref: members[0] for ref, members in claims.items() if len(members) == 1}


def _naming(member: Member) -> tuple[str, Any, str | None]:
    return member.id, member.identifier, member.fhir_reference


class PulledLinks:
    """The Puller's bookkeeping of the links between a plan and the server resources it was read from."""

    def _known_people(self, theirs: Plan, ours: Plan) -> dict[str, Member]:
        """Return the people (see known_people) the pulled CarePlan must be read again with: those it named by a
        literal reference alone (their resource not pulled) that the plan knows under another id, identifier or
        reference. Empty when the reading named everyone as the plan does (nothing to read again)."""
        pinned = {m.fhir_reference: m for m in theirs.team if m.fhir_reference}
        if not pinned:
            return {}
        people = known_people(ours, self.uow.links.for_plan(ours.id), self.base)
        return {ref: m for ref, m in people.items() if ref in pinned and _naming(pinned[ref]) != _naming(m)}

    def _server_moved(self, plan_id: str, careplan: dict[str, Any], index: dict[str, Any]) -> bool:
        """Tell whether any of the plan's resources on the server is at another version than recorded."""
        for resource in [careplan, *index.values()]:
            if resource.get("resourceType") not in ("CarePlan", "CareTeam", "Goal", "Observation"):
                continue
            if resource is not careplan and not self._belongs(resource, plan_id):
                continue
            link = self.uow.links.get(plan_id, self._key(resource))
            if link is None or link.version_id != resource.get("meta", {}).get("versionId"):
                return True
        return False

    def _key(self, resource: dict[str, Any]) -> str:
        """Return a pulled resource's link key: as a push keys the resource it builds for that part."""
        return self._keys.get(f"{resource.get('resourceType')}/{resource.get('id')}") or local_key(resource, self.base)

    def _record_versions(self, plan_id: str, careplan: dict[str, Any], index: dict[str, Any], now: datetime) -> None:
        seen: dict[str, dict[str, Any]] = {}
        for resource in index.values():
            if resource.get("resourceType") in ("Goal", "CareTeam", "Observation", "Patient") and "id" in resource:
                seen[f"{resource['resourceType']}/{resource['id']}"] = resource
        seen[f"CarePlan/{careplan.get('id')}"] = careplan
        subject = careplan.get("subject", {}).get("reference", "")
        for ref, resource in seen.items():
            if resource.get("resourceType") == "Patient" and ref != subject:
                continue
            version = resource.get("meta", {}).get("versionId")
            rtype, fhir_id = ref.split("/")
            key = "patient" if rtype == "Patient" else self._key(resource)
            if rtype != "Patient" and not self._belongs(resource, plan_id):
                continue
            self.uow.links.record(plan_id, key, rtype, fhir_id, version, now)
        self._forget_deleted(plan_id, careplan, index)

    def _forget_deleted(self, plan_id: str, careplan: dict[str, Any], index: dict[str, Any]) -> None:
        """Drop links to resources the plan names but the server no longer has (deleted in the EHR).

        The next push then neither writes to them by id (a 404/410 forever) nor brings them back,
        unless the plan kept them (a conflict resolved in favour of the team's change).
        """
        named = {r.get("reference", "") for r in [*careplan.get("goal", []), *careplan.get("careTeam", [])]}
        named |= self._linked  # asked for by id: not returned means deleted
        for resource in index.values():
            if resource.get("resourceType") == "Goal":
                named.update(r.get("reference", "") for r in resource.get("outcomeReference", []))
        missing = {ref for ref in named if ref.count("/") == 1 and ref not in index}
        links = self.uow.links.for_plan(plan_id)
        gone = [link.local_key for link in links if f"{link.resource_type}/{link.fhir_id}" in missing]
        self.uow.links.forget(plan_id, gone)

    def _belongs(self, resource: dict[str, Any], plan_id: str) -> bool:
        if f"{resource.get('resourceType')}/{resource.get('id')}" in self._owned:
            return True  # the EHR's, read as a part of this plan, even if another adopted plan wrote it too
        systems = {self._system(k) for k in ("plan", "careteam", "goal", "checkin")}
        ours = [i.get("value", "") for i in resource.get("identifier", []) if i.get("system") in systems]
        if not ours:  # the EHR's: part of this plan only when its CarePlan reaches it (not any CarePlan's of the pull)
            return False
        return any(v == plan_id or v.startswith(f"{plan_id}/") for v in ours)
