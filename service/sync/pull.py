"""Pull plans from the FHIR server and merge them into the shared plans.

A pull reads CarePlans by planbridge's identifier with their Goals, CareTeam, Patient and team
members in one search (`_include`, `_include:iterate`), and the check-in Observations the Goals
name in one more. Incremental pulls first ask which plans changed since the last successful pull
(`_lastUpdated`, every search in one `batch` request), so ten changed plans among thousands cost three
requests. A server that refuses batches is searched one type a request, and that is remembered a while.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from mappings import codes
from mappings.bundle import careplan_from_fhir, plan_to_bundle
from service.domain import codec
from service.domain.errors import PlanbridgeError
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.notify.changes import record_change
from service.settings import Settings
from service.store.uow import UnitOfWork
from service.sync.adopt import adopted_links, carry_sources, reachable, source_keys
from service.sync.deletions import (
    MAX_LOOKUPS,
    absent_goals,
    deleted_goals,
    kept_goal_refs,
    known_goals,
    unresolved_goal_refs,
    without_refs,
)
from service.sync.merge import (
    changed_paths,
    get_path,
    record_removals,
    set_path,
    strip_bookkeeping,
    three_way_merge,
    unsure_paths,
)
from service.sync.pull_links import PulledLinks
from service.sync.pull_origin import (  # noqa: F401  (re-exported)
    AUTHOR_REF,
    ITEM_PATH,
    SOURCE_URI,
    OriginLookup,
    carrier_key,
    changed_by,
    origin_of,
)
from service.sync.pull_search import (  # noqa: F401  (re-exported)
    BATCH_ENTRIES,
    BATCH_RETRY,
    CHUNK,
    Deleted,
    PullResult,
    PullSearches,
    _chunks,
    batch_cursor,
    history_cursor,
    history_since_cursor,
)
from service.sync.push import bundle_digest, sendable

log = logging.getLogger(__name__)
CURSOR = "pull"


class Puller(PullSearches, OriginLookup, PulledLinks):
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
        # exactly this MRN: servers matching identifiers without case would give a case twin's record
        patient = self.client.find_by_identifier("Patient", self.settings.mrn_system, mrn)
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

    def pull_changed(self, since: str | None = None) -> PullResult:
        """Pull what others changed since `since` (default: the last successful pull), and the plans linking a
        Goal, CareTeam, check-in or CarePlan the EHR deleted since then (see PullSearches.changed_plan_ids), and
        move the cursor."""
        with self.uow:
            since = since or self.uow.sync.cursor(CURSOR)
        history_since = self.history_since(since)
        since = since or "1970-01-01T00:00:00Z"
        result = PullResult()
        changed, newest, deleted = self.changed_plan_ids(since, result, history_since)
        if changed:
            pulled = self.pull_plans(sorted(changed))
            result.outcomes.update(pulled.outcomes)
            result.refusals.update(pulled.refusals)
            result.requests += pulled.requests
        with self.uow:
            self._settle_deleted_links(deleted, result.outcomes)
            self.uow.sync.set_cursor(CURSOR, newest)
            for rtype, seen in deleted.seen.items():  # each history's next read starts at its newest version
                self.uow.sync.set_cursor(history_since_cursor(rtype), seen)
            self.uow.commit()
        return result

    def _settle_deleted_links(self, deleted: Deleted, outcomes: dict[str, str]) -> None:
        """Settle the links of the plans just pulled to resources the server's history says were deleted, so the
        next pull, which reads the history from a cursor that may not have moved past the delete, does not pull
        them again: dropped (the merge recorded the deletion; the pull usually dropped them already), or, for a
        plan whose CarePlan is gone (`not-on-server`: it stays as it is, its next push writes it again, see
        docs/sync.md), kept and marked with the delete (`deleted_version`). A link the pull moved on (it read the
        resource again: written again after the delete) is left as it is, and so are the links of a plan the
        pull could not merge."""
        for plan_id, keys in deleted.links.items():
            outcome = outcomes.get(plan_id)
            if outcome in (None, "invalid"):
                continue
            if outcome == "not-on-server":
                self.uow.links.mark_deleted(plan_id, keys)
                continue
            stale = [
                key
                for key, (fhir_id, version, _) in keys.items()
                if (link := self.uow.links.get(plan_id, key)) is not None
                and (link.fhir_id, link.version_id) == (fhir_id, version)
            ]
            self.uow.links.forget(plan_id, stale)

    def merge(
        self, careplan: dict[str, Any], index: dict[str, Any], result: PullResult, *, queue_push: bool = True
    ) -> None:
        """Merge one pulled CarePlan (and what it references) into its shared plan.

        What the server sends is untrusted: a CarePlan that does not map is reported for its plan
        and left alone; the other plans of the pull go on.

        Two processes reading a plan for the first time at once (the same CarePlan adopted twice, a
        pull beside an adoption) both try to store it: the one that loses the race (a unique key
        violation on PostgreSQL) merges again, into the plan the other stored, as any later pull does.
        """
        try:
            self._merge_once(careplan, index, result, queue_push)
        except sa.exc.IntegrityError:
            log.info("plan %s: stored by another reader meanwhile; merging into it", self._plan_id(careplan))
            self._merge_once(careplan, index, result, queue_push)

    def _merge_once(
        self, careplan: dict[str, Any], index: dict[str, Any], result: PullResult, queue_push: bool
    ) -> None:
        gone, absent, spent = self._gone_goals(self._plan_id(careplan), careplan, index)
        result.requests += spent
        dropped = set(gone) | absent
        pulled_careplan, pulled_index = without_refs(careplan, dropped), self._without_refs(index, dropped)
        try:
            theirs = careplan_from_fhir(pulled_careplan, pulled_index, self.base, self.settings.mrn_system)
        except PlanbridgeError as exc:
            plan_id = self._plan_id(careplan)
            result.outcomes[plan_id] = "invalid"
            found = exc.data.get("errors")
            result.refusals[plan_id] = {
                "careplan": f"CarePlan/{careplan.get('id')}",
                "reason": exc.detail,
                "errors": {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {},
            }
            log.warning("plan %s: pulled CarePlan/%s does not map: %s", plan_id, careplan.get("id"), exc.code)
            with self.uow:
                if self.uow.plans.get(plan_id) is not None:
                    self.uow.sync.state(plan_id).last_error = f"pulled CarePlan does not map: {exc.detail}"[:2000]
                    self.uow.commit()
            return
        theirs_doc = strip_bookkeeping(codec.to_dict(theirs))
        now = self.clock()
        self._removed: list[dict[str, str]] = []  # what the EHR deleted or removed, as _merge_into recorded it
        # Only what the plan holds is its part: a second CareTeam, or a Goal the mapping kept as a bare reference,
        # is reached but not modelled, and linking it under the key of the part it is not (`careteam`) would
        # make a push write the plan's team into the EHR's other CareTeam.
        self._keys, reached = source_keys(theirs), reachable(careplan, index) | {f"CarePlan/{careplan.get('id')}"}
        self._owned = (reached & set(self._keys)) | {f"CarePlan/{careplan.get('id')}"}
        self._pulled = (careplan, index, {goal_id: ref for ref, (goal_id, _) in gone.items()})
        with self.uow:
            ours = self.uow.plans.get(theirs.id)
            if ours is not None and (people := self._known_people(theirs, ours)):
                # people the pull does not read (not on the CareTeam), named as the plan knows them (pull_links)
                theirs = careplan_from_fhir(
                    pulled_careplan, pulled_index, self.base, self.settings.mrn_system, people=people
                )
                theirs_doc = strip_bookkeeping(codec.to_dict(theirs))
            if ours is not None and carry_sources(theirs, ours, reached):
                theirs_doc = strip_bookkeeping(codec.to_dict(theirs))
                self._keys = source_keys(theirs)
                self._owned |= reached & set(self._keys)
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

    def _gone_goals(
        self, plan_id: str, careplan: dict[str, Any], index: dict[str, Any]
    ) -> tuple[dict[str, tuple[str, str | None]], set[str], int]:
        """Return the Goals the pulled CarePlan (or a Goal it names) refers to that the server no longer holds:
        ({`Goal/id`: (goal id in the plan, last version seen)} for goals of the plan the EHR deleted, the other
        such `Goal/id`, the requests spent). Nothing is asked when every reference resolved.

        Goals of the plan (see service.sync.deletions.deleted_goals) are known first by the plan's links and its
        goals' source marks (an adopted goal's Goal carries no planbridge identifier until planbridge writes it),
        else by the history (one read per unresolved CarePlan.goal, at most MAX_LOOKUPS). References the history
        did not settle (a Goal the plan never held, a server without instance history, a reference outside
        CarePlan.goal) are looked up in one search (`absent_goals`); a Goal it does not find is gone, and
        recorded as deleted when the plan knows it as one of its goals (its last version unknown)."""
        refs, kept = unresolved_goal_refs(careplan, index), kept_goal_refs(careplan, index)
        if not refs and not kept:
            return {}, set(), 0
        with self.uow:
            stored = self.uow.plans.get(plan_id)
            known = known_goals(self.uow.links.for_plan(plan_id), stored.goals if stored is not None else [])
        not_held: set[str] = set()
        gone = deleted_goals(self.client, refs, self._system("goal"), plan_id, known, not_held) if refs else {}
        spent = min(len(refs), MAX_LOOKUPS)
        absent, asked = absent_goals(self.client, [ref for ref in kept if ref not in gone and ref not in not_held])
        absent |= not_held
        for ref in sorted(absent):
            if ref in known and ref not in gone:
                gone[ref] = (known[ref], None)
        return gone, absent - set(gone), spent + asked

    @staticmethod
    def _without_refs(index: dict[str, Any], refs: set[str]) -> dict[str, Any]:
        """The pulled resources, each Goal without its references to these gone Goals (see deletions.without_refs)."""
        if not refs:
            return index
        return {
            key: without_refs(resource, refs) if key.startswith("Goal/") else resource
            for key, resource in index.items()
        }

    def _plan_id(self, careplan: dict[str, Any]) -> str:
        ours = [i.get("value") for i in careplan.get("identifier", []) if i.get("system") == self._system("plan")]
        return ours[0] if ours and ours[0] else f"careplan-{careplan.get('id', 'new')}"

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
            found += unsure_paths(merged_doc, other, base_doc, ours_doc, theirs_doc, found)
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
