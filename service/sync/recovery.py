"""Recovery from a server that lost or renumbered a plan's resources (a restored backup, a purge, the
in-memory development server restarted).

A push names the resources the server already holds by id (`PUT Type/id` with `If-Match`). When the
server answers 404/410, `recover_links` asks whether the plan's CarePlan is still where planbridge
linked it:

- **present**: the CarePlan is there, so something it names was deleted in the EHR. That is a change
  for the pull to record (service.sync.deletions), not data loss; nothing is done here.
- **relinked**: the CarePlan is gone from its id but found by planbridge's identifier (a server
  restored with other ids). Every link is looked up again by identifier (one search per resource
  type) and points at the resource found, at its current version; links nothing answers are dropped.
- **recreated**: nothing carries the CarePlan's identifier either: the server forgot the plan. Every
  link is dropped, so the next push writes the whole plan again by identifier (conditional updates
  and creates); items the plan records as deleted in the EHR stay deleted.

`repair_plans` (`planbridge sync repair`) runs the same check for many plans without waiting for a
change: one `CarePlan?_id=a,b,c` search per chunk of plans, then the above for the missing ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from mappings import codes
from service.domain.errors import PlanbridgeError
from service.fhir.client import FhirClient
from service.settings import Settings
from service.store.uow import UnitOfWork

log = logging.getLogger(__name__)
CHUNK = 50
PRESENT, RELINKED, RECREATED, UNLINKED = "present", "relinked", "recreated", "not-linked"
_KINDS = {"careteam": ("CareTeam", "careteam"), "goal": ("Goal", "goal"), "observation": ("Observation", "checkin")}


def _chunks(items: list[Any], size: int = CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _identifier(plan_id: str, local_key: str, base: str) -> tuple[str, str, str] | None:
    """Return (resource type, identifier system, value) planbridge gave the resource a link key names."""
    kind, _, rest = local_key.partition(":")
    if kind not in _KINDS:
        return None
    rtype, system_kind = _KINDS[kind]
    value = plan_id if kind == "careteam" else codes.scoped_value(plan_id, *rest.split("/"))
    return rtype, codes.identifier_system(base, system_kind), value


def _version(resource: dict[str, Any]) -> str | None:
    version = resource.get("meta", {}).get("versionId")
    return str(version) if version is not None else None


def forget_plan_links(uow: UnitOfWork, plan_id: str) -> None:
    """Drop every link of a plan and what was last pushed, so the next push writes it all by identifier."""
    uow.links.forget(plan_id, [link.local_key for link in uow.links.for_plan(plan_id)])
    state = uow.sync.state(plan_id)
    state.pushed_hash = None
    if state.status == "in_sync":
        state.status = "pending"


def _relink(
    uow: UnitOfWork, client: FhirClient, settings: Settings, plan_id: str, careplan: dict[str, Any], now: datetime
) -> None:
    """Point the plan's links at the resources that carry planbridge's identifiers now."""
    base = settings.identifier_base
    with uow:
        links = [(link.local_key, link.resource_type) for link in uow.links.for_plan(plan_id)]
    wanted: dict[tuple[str, str, str], str] = {}
    for key, _rtype in links:
        ident = _identifier(plan_id, key, base)
        if ident is not None:
            wanted[ident] = key
    found: dict[str, dict[str, Any]] = {}
    by_type: dict[str, list[tuple[str, str, str]]] = {}
    for ident in wanted:
        by_type.setdefault(ident[0], []).append(ident)
    for rtype, idents in sorted(by_type.items()):
        for chunk in _chunks(idents):
            params = {
                "identifier": ",".join(codes.identifier_token(s, v) for _, s, v in chunk),
                "_count": str(2 * len(chunk)),
            }
            for resource in client.search(rtype, params):
                for i in resource.get("identifier", []):
                    key = wanted.get((rtype, i.get("system", ""), i.get("value", "")))
                    if key is not None:
                        found[key] = resource
    with uow:
        uow.links.record(plan_id, "careplan", "CarePlan", careplan["id"], _version(careplan), now)
        subject = careplan.get("subject", {}).get("reference", "")
        if subject.startswith("Patient/") and subject.count("/") == 1:
            uow.links.record(plan_id, "patient", "Patient", subject.split("/")[1], None, now)
        for key, resource in found.items():
            uow.links.record(plan_id, key, resource["resourceType"], resource["id"], _version(resource), now)
        stale = [key for key, _ in links if key not in found and key not in ("careplan", "patient")]
        if not subject.startswith("Patient/"):
            stale.append("patient")
        uow.links.forget(plan_id, stale)
        uow.sync.state(plan_id).pushed_hash = None
        uow.commit()


def recover_links(
    uow: UnitOfWork, client: FhirClient, settings: Settings, plan_id: str, clock: Callable[[], datetime]
) -> str:
    """After a 404/410 on a push: tell whether the plan's CarePlan is still where it was linked, and when it
    is not, relink the plan by identifier or forget its links. Return "present", "relinked", "recreated"
    (links forgotten: the next push writes the plan again) or "not-linked" (no CarePlan link to check)."""
    with uow:
        link = uow.links.get(plan_id, "careplan")
        linked = link.fhir_id if link is not None else None
    if linked is None:
        return UNLINKED
    if client.search("CarePlan", {"_id": linked}):
        return PRESENT
    return _recover_missing(uow, client, settings, plan_id, clock)


def _recover_missing(
    uow: UnitOfWork, client: FhirClient, settings: Settings, plan_id: str, clock: Callable[[], datetime]
) -> str:
    system = codes.identifier_system(settings.identifier_base, "plan")
    found = client.search("CarePlan", {"identifier": codes.identifier_token(system, plan_id)})
    if found:
        _relink(uow, client, settings, plan_id, found[0], clock())
        log.warning("plan %s: CarePlan found again as CarePlan/%s; links renewed", plan_id, found[0].get("id"))
        return RELINKED
    with uow:
        forget_plan_links(uow, plan_id)
        uow.commit()
    log.warning("plan %s: the server no longer holds its CarePlan; links forgotten, the plan is written again", plan_id)
    return RECREATED


def repair_plans(
    uow: UnitOfWork,
    client: FhirClient,
    settings: Settings,
    clock: Callable[[], datetime],
    plan_ids: list[str],
    push: Callable[[str], Any],
) -> dict[str, str]:
    """Check each plan's linked CarePlan (one search per chunk of plans); relink or forget the links of the
    plans the server lost and push those at once. Return {plan id: "present" | "relinked" | "recreated" |
    "not-linked" | "failed"}."""
    summary: dict[str, str] = {}
    with uow:
        linked = {}
        for plan_id in sorted(set(plan_ids)):
            link = uow.links.get(plan_id, "careplan")
            if link is None:
                summary[plan_id] = UNLINKED
            else:
                linked[plan_id] = link.fhir_id
    missing: list[str] = []
    for chunk in _chunks(sorted(linked)):
        ids = sorted({linked[p] for p in chunk})
        there = {r.get("id") for r in client.search("CarePlan", {"_id": ",".join(ids), "_count": str(len(ids))})}
        for plan_id in chunk:
            if linked[plan_id] in there:
                summary[plan_id] = PRESENT
            else:
                missing.append(plan_id)
    for plan_id in missing:
        outcome = _recover_missing(uow, client, settings, plan_id, clock)
        try:
            push(plan_id)
        except PlanbridgeError as exc:
            log.warning("plan %s: the push after repair failed: %s", plan_id, exc.code)
            outcome = "failed"
        summary[plan_id] = outcome
    return dict(sorted(summary.items()))
