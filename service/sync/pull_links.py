"""The links of a pulled plan (service.sync.pull): which pulled resources are its parts, and at which version.

A part is keyed as a push keys the resource it builds for it; the EHR's resources without planbridge's
identifier belong to a plan only when its CarePlan reaches them. Versions are recorded on every read,
and links to resources the server no longer has are dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.sync.push import local_key


class PulledLinks:
    """The Puller's bookkeeping of the links between a plan and the server resources it was read from."""

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
