"""Where a pulled value came from (service.sync.pull): the EHR side of a conflict.

The resource holding a plan path on the server (`carrier_key`), and its type, id, version, time and
author as FHIR tells them (`origin_of`, `changed_by`), looked up among the resources of the pull.
"""

from __future__ import annotations

import re
from typing import Any

from service.domain.instants import zoned_instant
from service.store.repo_sync import EhrOrigin

SOURCE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[!-~]{1,500}|#[!-~]{1,500}")  # meta.source: a URI, no spaces
AUTHOR_REF = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}")  # Medplum's meta.author: `Practitioner/12`
ITEM_PATH = re.compile(r"(goals|steps|team)\[id=([^\]]*)\]")


def changed_by(meta: Any) -> str | None:
    """Return who made a resource version, as FHIR tells it: `meta.source` (a URI), else the reference in
    Medplum's `meta.author`; None when neither is there or well formed. Never a name or free text."""
    if not isinstance(meta, dict):
        return None
    source = meta.get("source")
    if isinstance(source, str) and SOURCE_URI.fullmatch(source):
        return source
    author = meta.get("author")
    reference = author.get("reference") if isinstance(author, dict) else None
    if isinstance(reference, str) and AUTHOR_REF.fullmatch(reference):
        return reference
    return None


def origin_of(resource: dict[str, Any]) -> EhrOrigin:
    """Return where a pulled resource's current version came from (its type, id, version, time and author)."""
    meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
    version = meta.get("versionId")
    return EhrOrigin(
        resource_type=str(resource.get("resourceType"))[:64],
        resource_id=str(resource.get("id"))[:64],
        version=str(version)[:64] if version is not None else None,
        changed_at=zoned_instant(meta.get("lastUpdated")),
        changed_by=changed_by(meta),
    )


def carrier_key(path: str, theirs: Any) -> str:
    """Return the link key of the resource that holds a plan path on the server (`goal:g`,
    `observation:g/c`, `careteam`, `patient`, `careplan`). An item the EHR took out (theirs null on a
    whole goal, step or member) was taken out by its container: the CarePlan, or the CareTeam."""
    item = ITEM_PATH.match(path)
    whole = item is not None and item.end() == len(path)
    if path == "team" or path.startswith(("team.", "team[")):
        return "careteam"
    if path == "patient" or path.startswith(("patient.", "patient[")):
        return "patient"
    if item is not None and item.group(1) == "goals" and not (whole and theirs is None):
        inner = re.match(r"\.(?:check_ins|ratings)\[id=([^\]]*)\]", path[item.end() :])
        return f"observation:{item.group(2)}/{inner.group(1)}" if inner else f"goal:{item.group(2)}"
    return "careplan"


class OriginLookup:
    """The Puller's lookup of the resource, among those of the CarePlan being merged, a server value came from."""

    def _origin(self, plan_id: str, path: str, theirs: Any) -> EhrOrigin:
        """Return where the server's value at a plan path came from, in the CarePlan being merged: the resource
        holding it (as `carrier_key` names it, among the resources of this pull, keyed as their links are), its
        version, meta.lastUpdated and meta.source. A Goal the EHR deleted: its id, nothing more (a history
        need not say when or by whom). Nothing known: an empty origin."""
        careplan, index, deleted = getattr(self, "_pulled", ({}, {}, {}))
        item = ITEM_PATH.fullmatch(path)
        if item is not None and item.group(1) == "goals" and theirs is None and item.group(2) in deleted:
            return EhrOrigin(resource_type="Goal", resource_id=deleted[item.group(2)].split("/", 1)[1][:64])
        parts: dict[str, dict[str, Any]] = {"careplan": careplan}  # link key -> the pulled resource
        for resource in index.values():
            kind = resource.get("resourceType")
            if kind in ("CareTeam", "Goal", "Observation") and "id" in resource and self._belongs(resource, plan_id):
                parts[self._key(resource)] = resource
        subject_ref = careplan.get("subject")
        subject = index.get(subject_ref.get("reference", "")) if isinstance(subject_ref, dict) else None
        if isinstance(subject, dict) and subject.get("resourceType") == "Patient":
            parts["patient"] = subject
        key = carrier_key(path, theirs)
        for candidate in (key, key.split("/", 1)[0].replace("observation:", "goal:"), "careplan"):
            if parts.get(candidate):
                return origin_of(parts[candidate])
        return EhrOrigin()
