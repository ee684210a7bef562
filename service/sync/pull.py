"""Pull plans from the FHIR server and merge them into the shared plans.

A pull reads CarePlans by planbridge's identifier with their Goals, CareTeam, Patient and team
members in one search (`_include`, `_include:iterate`), and the check-in Observations the Goals
name in one more. Incremental pulls first ask which plans changed since the last successful pull
(`_lastUpdated`, every search in one `batch` request), so ten changed plans among thousands cost three
requests. A server that refuses batches is searched one type a request, and that is remembered a while.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mappings import codes
from mappings.bundle import careplan_from_fhir, index_entries, plan_to_bundle
from service.domain import codec
from service.domain.errors import PlanbridgeError
from service.domain.model import Plan
from service.fhir.client import BatchUnsupported, FhirClient
from service.notify.changes import record_change
from service.settings import Settings
from service.store.repo_sync import EhrOrigin
from service.store.uow import UnitOfWork
from service.sync.adopt import TRACKED, adopted_links, reachable, source_keys
from service.sync.deletions import MAX_LOOKUPS, deleted_goals, unresolved_goal_refs, without_refs
from service.sync.merge import (
    changed_paths,
    get_path,
    record_removals,
    set_path,
    strip_bookkeeping,
    three_way_merge,
    unsure_paths,
)
from service.sync.push import bundle_digest, local_key, sendable

log = logging.getLogger(__name__)
CHUNK = 50
CURSOR = "pull"
BATCH_ENTRIES = 100  # searches per batch request
BATCH_RETRY = timedelta(hours=24)  # after a server refused a batch, pulls search one by one for this long
SOURCE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[!-~]{1,500}|#[!-~]{1,500}")  # meta.source: a URI, no spaces
AUTHOR_REF = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}")  # Medplum's meta.author: `Practitioner/12`
ITEM_PATH = re.compile(r"(goals|steps|team)\[id=([^\]]*)\]")


def batch_cursor(base_url: str) -> str:
    """Return the name under which a server's refusal of batches is remembered (sync_cursors, 64 characters):
    its value is `refused <instant>`, or `accepted <instant>` once a later batch went through."""
    return f"fhir-batch:{hashlib.sha256(base_url.encode()).hexdigest()[:40]}"


@dataclass
class PullResult:
    """What a pull did, plan by plan: unchanged, updated, merged (push pending), conflicted or new."""

    outcomes: dict[str, str] = field(default_factory=dict)
    requests: int = 0


def _instant(value: Any) -> datetime | None:
    """Read a FHIR instant (meta.lastUpdated); None when it is absent, malformed or has no zone."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


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
        changed_at=_instant(meta.get("lastUpdated")),
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


def _chunks(items: list[str], size: int = CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Puller:
    """Reads plans from the server and merges them three ways against the last synced snapshot."""

    def __init__(self, uow: UnitOfWork, client: FhirClient, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.uow, self.client, self.settings, self.clock = uow, client, settings, clock
        self.base = settings.identifier_base
        self.page_size = 200
        self._linked: frozenset[str] = frozenset()  # check-ins linked to the plans being pulled (see fetch)
        # Of the CarePlan being merged: link keys of parts read from EHR resources (see adopt.source_keys),
        # and `Type/id` of what the CarePlan reaches (only those can be its parts when they carry no identifier).
        self._keys: dict[str, str] = {}
        self._owned: set[str] = set()
        self._batch_state = ""  # this server's batch cursor as last read (see _batch_allowed)

    def _system(self, kind: str) -> str:
        return codes.identifier_system(self.base, kind)

    def fetch(
        self, params: list[tuple[str, str]], result: PullResult, linked: frozenset[str] = frozenset()
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Search CarePlans with everything a plan needs; return (CarePlan, index of resources).

        `linked`: `Observation/id` of check-ins the plans' links name, read even when no Goal names them
        any more (their Goal deleted in the EHR): their versions must stay known, or a push that brings
        the goal back would name a stale version on every try.
        """
        before = self.client.requests_sent
        includes = [
            ("_include", "CarePlan:goal"),
            ("_include", "CarePlan:care-team"),
            ("_include", "CarePlan:subject"),
            ("_include:iterate", "CareTeam:participant"),
            ("_count", "200"),
        ]
        entries = self.client.search_entries("CarePlan", [*params, *includes])
        index = index_entries(entries)
        wanted = sorted(
            {
                ref["reference"].split("/")[1]
                for e in entries
                if e["resource"].get("resourceType") == "Goal"
                for ref in e["resource"].get("outcomeReference", [])
                if ref.get("reference", "").startswith("Observation/") and ref["reference"] not in index
            }
            | {ref.split("/")[1] for ref in linked if ref not in index}
        )
        for chunk in _chunks(wanted):
            params = {"_id": ",".join(chunk), "_count": str(len(chunk))}  # one page, not the server's default 20
            index.update(index_entries(self.client.search_entries("Observation", params)))
        result.requests += self.client.requests_sent - before
        plans = [
            e["resource"]
            for e in entries
            if e["resource"].get("resourceType") == "CarePlan" and e.get("search", {}).get("mode", "match") == "match"
        ]
        return [(careplan, index) for careplan in plans]

    def pull_plans(self, plan_ids: list[str], *, queue_push: bool = True) -> PullResult:
        """Pull the named plans and merge each into its shared plan.

        Plans planbridge authored are searched by planbridge's identifier; adopted plans (see
        service.sync.adopt) by their CarePlan's id, so they are found before planbridge ever wrote to them.
        `queue_push=False` when the caller pushes right after (a push re-reading after a refusal),
        so what the merge leaves to send is not queued a second time.
        """
        result = PullResult()
        with self.uow:
            adopted = {
                plan_id: next(link.fhir_id for link in links if link.local_key == "careplan")
                for plan_id, links in adopted_links(self.uow, plan_ids).items()
            }
        for chunk in _chunks(sorted(set(plan_ids) - set(adopted))):
            condition = ",".join(codes.identifier_token(self._system("plan"), plan_id) for plan_id in chunk)
            self._pull_chunk(chunk, [("identifier", condition)], result, queue_push)
        for chunk in _chunks(sorted(adopted)):
            self._pull_chunk(chunk, [("_id", ",".join(adopted[plan_id] for plan_id in chunk))], result, queue_push)
        for plan_id in plan_ids:
            result.outcomes.setdefault(plan_id, "not-on-server")
        return result

    def _pull_chunk(
        self, chunk: list[str], params: list[tuple[str, str]], result: PullResult, queue_push: bool
    ) -> None:
        with self.uow:
            self._linked = frozenset(
                f"Observation/{link.fhir_id}"
                for plan_id in chunk
                for link in self.uow.links.for_plan(plan_id)
                if link.resource_type == "Observation"
            )
        for careplan, index in self.fetch(params, result, self._linked):
            self.merge(careplan, index, result, queue_push=queue_push)
        self._linked = frozenset()

    def pull_patient(self, mrn: str) -> PullResult:
        """Pull every CarePlan of the patient with this MRN (plans the EHR authored included)."""
        result = PullResult()
        patient = self.client.find_one("Patient", {"identifier": codes.identifier_token(self.settings.mrn_system, mrn)})
        result.requests += 1
        if patient is not None:
            for careplan, index in self.fetch([("subject", f"Patient/{patient['id']}")], result):
                self.merge(careplan, index, result)
        return result

    def pull_careplans(self, careplan_ids: list[str]) -> PullResult:
        """Pull CarePlans by server id (`CarePlan?_id=`), whoever authored them: adoption by id."""
        result = PullResult()
        for chunk in _chunks(sorted(set(careplan_ids))):
            for careplan, index in self.fetch([("_id", ",".join(chunk))], result):
                self.merge(careplan, index, result)
        return result

    def changed_plan_ids(self, since: str, result: PullResult) -> tuple[set[str], str]:
        """Return the plans whose CarePlan, CareTeam, Goals or check-ins someone else changed after `since`,
        and the newest `lastUpdated` seen (the next cursor, in the server's own clock).

        A resource whose version is the one planbridge last wrote or read is not a change to pull. Every
        search (the four by planbridge's identifiers, and the adopted plans' by `_id`) goes in one `batch`
        request when the server takes batches (see `_search_all`).
        """
        kinds = (("plan", "CarePlan"), ("careteam", "CareTeam"), ("goal", "Goal"), ("checkin", "Observation"))
        searches: list[tuple[str, dict[str, str]]] = [
            (
                rtype,
                {"identifier": f"{self._system(kind)}|", "_lastUpdated": f"gt{since}", "_count": str(self.page_size)},
            )
            for kind, rtype in kinds
        ]
        versions = self._adopted_versions()
        for rtype in TRACKED:
            ids = sorted(fhir_id for kind, fhir_id in versions if kind == rtype)
            for chunk in _chunks(ids):
                searches.append(
                    (rtype, {"_id": ",".join(chunk), "_lastUpdated": f"gt{since}", "_count": str(len(chunk))})
                )
        answers = self._search_all(searches, result)
        plan_ids: set[str] = set()
        newest = since
        with self.uow:
            for (kind, _), found in zip(kinds, answers, strict=False):
                system = self._system(kind)
                for resource in found:
                    newest = max(newest, resource.get("meta", {}).get("lastUpdated", since))
                    value = next(
                        (i.get("value", "") for i in resource.get("identifier", []) if i.get("system") == system), ""
                    )
                    plan_id = value.split("/", 1)[0]
                    link = self.uow.links.get(plan_id, local_key(resource, self.base))
                    if link is None or link.version_id != resource.get("meta", {}).get("versionId"):
                        plan_ids.add(plan_id)
        # The adopted plans' resources may carry no planbridge identifier: searched by the ids their links name.
        for (rtype, _), found in zip(searches[len(kinds) :], answers[len(kinds) :], strict=True):
            for resource in found:
                newest = max(newest, resource.get("meta", {}).get("lastUpdated", since))
                for plan_id, version in versions.get((rtype, str(resource.get("id"))), []):
                    if version != resource.get("meta", {}).get("versionId"):
                        plan_ids.add(plan_id)
        return plan_ids, newest

    def _adopted_versions(self) -> dict[tuple[str, str], list[tuple[str, str | None]]]:
        """Return (type, id) -> [(plan, version last seen)] of the resources adopted plans link (none: no
        search at all). They are searched by `_id`, 50 a search, per type."""
        with self.uow:
            versions: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
            for plan_id, links in adopted_links(self.uow).items():
                for link in links:
                    if link.resource_type in TRACKED:
                        versions.setdefault((link.resource_type, link.fhir_id), []).append((plan_id, link.version_id))
        return versions

    def _search_all(self, searches: list[tuple[str, dict[str, str]]], result: PullResult) -> list[list[dict[str, Any]]]:
        """Run the searches; return each one's matches, every page (`next` links followed exactly).

        One `batch` request carries them all (up to BATCH_ENTRIES a request), unless this server refused a
        batch within BATCH_RETRY (remembered in sync_cursors, see `batch_cursor`): then, and for any search
        the batch did not answer completely (an error for that entry, a page short of its total with no
        `next` link), each goes as a search of its own, whose refusal fails the pull (the cursor stays).
        """
        before = self.client.requests_sent
        answers: list[list[dict[str, Any]] | None] = [None] * len(searches)
        if searches and self._batch_allowed():
            try:
                for start in range(0, len(searches), BATCH_ENTRIES):
                    part = searches[start : start + BATCH_ENTRIES]
                    answers[start : start + len(part)] = self.client.search_batch(part)
            except BatchUnsupported as exc:
                self._remember_batch(f"refused {self.clock().isoformat()}")
                log.warning(
                    "the FHIR server does not take batch searches (HTTP %s); pulls search one by one for %d h",
                    exc.status,
                    BATCH_RETRY.total_seconds() // 3600,
                )
            else:
                if self._batch_state.startswith("refused"):
                    self._remember_batch(f"accepted {self.clock().isoformat()}")
                    log.info("the FHIR server takes batch searches again")
        out: list[list[dict[str, Any]]] = []
        for (rtype, params), entries in zip(searches, answers, strict=True):
            if entries is None:
                out.append(self.client.search(rtype, params))
            else:
                out.append([e["resource"] for e in entries if e.get("search", {}).get("mode", "match") == "match"])
        result.requests += self.client.requests_sent - before
        return out

    def _batch_allowed(self) -> bool:
        """Tell whether to send searches as a batch: yes unless this server refused one within BATCH_RETRY."""
        with self.uow:
            self._batch_state = self.uow.sync.cursor(batch_cursor(self.client.base_url)) or ""
        word, _, when = self._batch_state.partition(" ")
        if word != "refused":
            return True
        try:
            refused = datetime.fromisoformat(when)
        except ValueError:
            return True
        with contextlib.suppress(TypeError):  # a naive instant against an aware clock: try the batch
            return self.clock() - refused >= BATCH_RETRY
        return True

    def _remember_batch(self, value: str) -> None:
        with self.uow:
            self.uow.sync.set_cursor(batch_cursor(self.client.base_url), value[:64])
            self.uow.commit()
        self._batch_state = value

    def pull_changed(self, since: str | None = None) -> PullResult:
        """Pull what others changed since `since` (default: the last successful pull) and move the cursor."""
        with self.uow:
            since = since or self.uow.sync.cursor(CURSOR) or "1970-01-01T00:00:00Z"
        result = PullResult()
        changed, newest = self.changed_plan_ids(since, result)
        if changed:
            pulled = self.pull_plans(sorted(changed))
            result.outcomes.update(pulled.outcomes)
            result.requests += pulled.requests
        with self.uow:
            self.uow.sync.set_cursor(CURSOR, newest)
            self.uow.commit()
        return result

    def merge(
        self, careplan: dict[str, Any], index: dict[str, Any], result: PullResult, *, queue_push: bool = True
    ) -> None:
        """Merge one pulled CarePlan (and what it references) into its shared plan.

        What the server sends is untrusted: a CarePlan that does not map is reported for its plan
        and left alone; the other plans of the pull go on.
        """
        refs = unresolved_goal_refs(careplan, index)
        gone = deleted_goals(self.client, refs, self._system("goal"), self._plan_id(careplan)) if refs else {}
        result.requests += min(len(refs), MAX_LOOKUPS)
        try:
            theirs = careplan_from_fhir(without_refs(careplan, set(gone)), index, self.base, self.settings.mrn_system)
        except PlanbridgeError as exc:
            plan_id = self._plan_id(careplan)
            result.outcomes[plan_id] = "invalid"
            log.warning("plan %s: pulled CarePlan/%s does not map: %s", plan_id, careplan.get("id"), exc.code)
            with self.uow:
                if self.uow.plans.get(plan_id) is not None:
                    self.uow.sync.state(plan_id).last_error = f"pulled CarePlan does not map: {exc.detail}"[:2000]
                    self.uow.commit()
            return
        theirs_doc = strip_bookkeeping(codec.to_dict(theirs))
        now = self.clock()
        self._removed: list[dict[str, str]] = []  # what the EHR deleted or removed, as _merge_into recorded it
        self._keys, self._owned = source_keys(theirs), reachable(careplan, index) | {f"CarePlan/{careplan.get('id')}"}
        self._pulled = (careplan, index, {goal_id: ref for ref, (goal_id, _) in gone.items()})
        with self.uow:
            ours = self.uow.plans.get(theirs.id)
            state = self.uow.sync.state(theirs.id)
            # A push whose answer was lost: the server may hold what it sent, or not. Unless nothing
            # moved on the server since the last recorded versions, merge against both readings.
            sent = state.push_sent_document if self._server_moved(theirs.id, careplan, index) else None
            state.push_started_at, state.push_sent_document = None, None  # this read settles it
            self._record_versions(theirs.id, careplan, index, now)
            if ours is None:
                # First read: the plan is as the EHR has it. No `created` is invented (touch() would set one):
                # it stays what the CarePlan says, possibly none, so a push never writes the import time.
                theirs.version, theirs.updated_at = 1, now.isoformat()
                self.uow.plans.save(theirs)
                outcome, merged_doc, saved, queued, opened = "new", theirs_doc, theirs.version, False, []
                changed = ["*"]
            else:
                outcome, merged_doc, saved, queued, opened = self._merge_into(
                    ours, state, theirs_doc, now, queue_push, dict(gone.values()), sent
                )
                changed = changed_paths(strip_bookkeeping(codec.to_dict(ours)), merged_doc)
            if saved is not None or opened:  # subscribed team systems hear of a change, and of a new conflict
                change = {"outcome": outcome, "careplan_id": careplan.get("id"), "paths": changed[:50]}
                if opened:
                    change["conflicts"] = opened[:50]
                if self._removed:  # items the EHR deleted, removed or marked entered-in-error, kept in the plan
                    change["removed"] = self._removed[:50]
                version = saved if saved is not None else ours.version if ours is not None else theirs.version
                record_change(
                    self.uow,
                    theirs.id,
                    "ehr.plan_changed",
                    {"plan_version": version, "source": "ehr", "change": change},
                    now,
                )
            # The merge base is what the server holds now. Open conflicts are not lost by this:
            # they hold their paths (see _merge_into) until someone resolves them.
            state.base_document = theirs_doc
            state.last_pulled_at = now
            if outcome in ("new", "updated", "unchanged") or (outcome == "conflicted" and not queued):
                # Nothing of ours is waiting to go: the next push of this same plan costs nothing.
                plan = codec.from_dict(Plan, self._held(theirs.id, merged_doc, theirs_doc))
                patient = self.uow.links.get(theirs.id, "patient")
                state.pushed_hash = bundle_digest(
                    plan_to_bundle(
                        plan, self.base, self.settings.mrn_system, f"Patient/{patient.fhir_id}" if patient else None
                    )
                )
                if outcome != "conflicted":
                    state.status = "in_sync"
            self.uow.commit()
        result.outcomes[theirs.id] = outcome
        log.info("plan %s pulled: %s", theirs.id, outcome)

    def _plan_id(self, careplan: dict[str, Any]) -> str:
        ours = [i.get("value") for i in careplan.get("identifier", []) if i.get("system") == self._system("plan")]
        return ours[0] if ours and ours[0] else f"careplan-{careplan.get('id', 'new')}"

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

    def _held(self, plan_id: str, document: dict[str, Any], theirs_doc: dict[str, Any]) -> dict[str, Any]:
        """Return what a push would send: the document with each open conflict's path at the server's value."""
        rows = self.uow.sync.conflicts(plan_id)
        return sendable(document, {row.path: get_path(theirs_doc, row.path) for row in rows})

    def _merge_into(
        self,
        ours: Plan,
        state: Any,
        theirs_doc: dict[str, Any],
        now: datetime,
        queue_push: bool = True,
        deleted: dict[str, str | None] | None = None,
        sent: dict[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any], int | None, bool, list[str]]:
        """Merge the server's plan into ours.

        Return (outcome, merged document, saved version, push queued, paths of conflicts opened now).

        A field with an open conflict is held: the plan keeps the team's value, the server keeps
        its own, and the conflict follows the server's newest value until someone resolves it. Only
        when the team's value comes to equal the server's does it close by itself ("converged").
        """
        ours_doc = strip_bookkeeping(codec.to_dict(ours))
        base_doc = state.base_document if state.base_document is not None else ours_doc
        merged_doc, found = three_way_merge(base_doc, ours_doc, theirs_doc)
        added, self._removed = record_removals(
            deleted or {}, base_doc, ours_doc, theirs_doc, merged_doc, found, now.isoformat()
        )
        found += added
        if sent is not None:
            other, _ = three_way_merge(sent, ours_doc, theirs_doc)
            # a Goal the server deleted is recorded alike in both readings
            record_removals(deleted or {}, sent, ours_doc, theirs_doc, other, [], now.isoformat(), deleted_only=True)
            found += unsure_paths(merged_doc, other, base_doc, ours_doc, found)
        open_rows = self.uow.sync.conflicts(ours.id)
        for row in open_rows:
            mine, server = get_path(ours_doc, row.path), get_path(theirs_doc, row.path)
            if mine in (server, row.theirs):
                # The team took the EHR's value (the one it holds now, or the one the conflict showed):
                # nothing is left to decide, and the server's value stands.
                self.uow.sync.close_conflict(row, "converged", now)
                continue
            if server != row.theirs:  # the EHR changed the held field again: its side comes from the newer version
                self.uow.sync.set_origin(row, self._origin(ours.id, row.path, server))
            row.ours, row.theirs = mine, server
            with contextlib.suppress(KeyError, TypeError):  # the item holding the path may be gone
                set_path(merged_doc, row.path, mine)
        held = {row.path for row in open_rows if row.status == "open"}
        opened = []
        for conflict in found:
            if conflict.path not in held:
                origin = self._origin(ours.id, conflict.path, conflict.theirs)
                self.uow.sync.add_conflict(
                    ours.id, conflict.path, conflict.base, conflict.ours, conflict.theirs, now, origin
                )
                log.info(
                    "plan %s: conflict on %s, EHR side from %s/%s version %s",
                    ours.id,
                    conflict.path,
                    origin.resource_type,
                    origin.resource_id,
                    origin.version,
                )
                held.add(conflict.path)
                opened.append(conflict.path)
        self.uow.flush()
        saved = None
        if merged_doc != ours_doc:
            merged = codec.from_dict(Plan, {**merged_doc, "version": ours.version, "updated_at": ours.updated_at})
            merged.touch(now.isoformat())
            self.uow.plans.save(merged)
            saved = merged.version
        # What the server lacks besides the held paths goes out in a push, conflicts or not.
        queued = self._held(ours.id, merged_doc, theirs_doc) != theirs_doc
        if queued and queue_push:
            self.uow.outbox.add(ours.id, "push_plan", None, None, now)
        if held:
            state.status = "conflicted"
            return "conflicted", merged_doc, saved, queued, opened
        if queued:
            state.status = "pending"
            return "merged", merged_doc, saved, queued, opened
        return ("updated" if merged_doc != ours_doc else "unchanged"), merged_doc, saved, queued, opened

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
        systems = {self._system(k) for k in ("plan", "careteam", "goal", "checkin")}
        ours = [i.get("value", "") for i in resource.get("identifier", []) if i.get("system") in systems]
        if not ours:  # the EHR's: part of this plan only when its CarePlan reaches it (not any CarePlan's of the pull)
            return f"{resource.get('resourceType')}/{resource.get('id')}" in self._owned
        return any(v == plan_id or v.startswith(f"{plan_id}/") for v in ours)
