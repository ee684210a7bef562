"""The searches of a pull (service.sync.pull): what a pull did, and how it asks the server.

A pull reads CarePlans with everything a plan needs in one search, and the check-ins their Goals name in
one more. An incremental pull first asks which plans changed since the last successful pull (`_lastUpdated`,
every search in one `batch` request), and which Goals, CareTeams, check-in Observations and CarePlans were
deleted since (`<Type>/_history?_since=`, the batch's last entries: a deleted resource is no search's match); a
server that refuses batches is searched one type a request, and that is remembered a while (sync_cursors, see
`batch_cursor`), as is a server without type-level history (`history_cursor`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mappings.bundle import index_entries
from service.domain.instants import zoned_instant
from service.fhir.client import BatchUnsupported, search_url
from service.fhir.errors import FhirError
from service.sync.adopt import TRACKED, adopted_links
from service.sync.deletions import deleted_in_history
from service.sync.push import local_key

log = logging.getLogger("service.sync.pull")  # the puller's records, under the name they always had
CHUNK = 50
BATCH_ENTRIES = 100  # searches per batch request
BATCH_RETRY = timedelta(hours=24)  # after a server refused a batch, pulls search one by one for this long
# The types whose type-level history is read for deletions: what the EHR may delete under a plan. Only the types
# some plan links are asked (a type no plan links has no deletion to trace).
HISTORY_TYPES = ("Goal", "CareTeam", "Observation", "CarePlan")
HISTORY_REFUSALS = frozenset({400, 404, 405, 501})  # a server without type-level history answers so
HISTORY_PAGE = 1000  # a history page: every write of the type counts, planbridge's own too (a server caps it)
FIRST_SINCE_MARGIN = timedelta(hours=1)  # clock skew allowed between planbridge and the server (first pull)


def batch_cursor(base_url: str) -> str:
    """Return the name under which a server's refusal of batches is remembered (sync_cursors, 64 characters):
    its value is `refused <instant>`, or `accepted <instant>` once a later batch went through."""
    return f"fhir-batch:{hashlib.sha256(base_url.encode()).hexdigest()[:40]}"


def history_cursor(base_url: str) -> str:
    """Return the name under which a server's refusal of type-level history is remembered, as `batch_cursor`."""
    return f"fhir-history:{hashlib.sha256(base_url.encode()).hexdigest()[:40]}"


def history_since_cursor(resource_type: str) -> str:
    """Return the name of the cursor (sync_cursors) from which the next read of a type's history starts."""
    return f"history-since:{resource_type}"


def history_newest(entries: Iterable[Any]) -> str | None:
    """Return the newest `meta.lastUpdated` among the versions a history lists (a delete carries none), None when
    it lists none. A history read from there (`_since` is inclusive) lists that version again and what came
    after it: nothing is skipped, and a type whose resources planbridge never touches is not read again and
    again from an old cursor. A value that is not an instant (malformed, or without a zone) is passed over: sent
    back as `_since` it would have the history refused on every later pull."""
    instants: dict[str, datetime] = {}
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        meta = resource.get("meta") if isinstance(resource, dict) else None
        updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
        if (at := zoned_instant(updated)) is not None:
            instants[updated] = at
    return max(instants, key=instants.__getitem__) if instants else None


@dataclass
class Deleted:
    """Resources the server's history says were deleted since the cursor, and the links naming them that the pull
    drops (or marks, see Puller._settle_deleted_links) once it pulled their plans:
    {plan id: {link key: (resource id, link version before the pull, version of the delete or "")}}."""

    links: dict[str, dict[str, tuple[str, str | None, str]]] = field(default_factory=dict)
    # type -> the newest `meta.lastUpdated` among the versions its history listed: where its next read starts
    seen: dict[str, str] = field(default_factory=dict)


@dataclass
class PullResult:
    """What a pull did, plan by plan: unchanged, updated, merged (push pending), conflicted or new."""

    outcomes: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    # why each plan with outcome "invalid" was refused: {"careplan": "CarePlan/<id>", "reason", "errors" {path: why}}
    refusals: dict[str, dict[str, Any]] = field(default_factory=dict)


def _chunks(items: list[str], size: int = CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class PullSearches:
    """The Puller's searches: its plans with what they reference, and which plans changed since a cursor."""

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

    def changed_plan_ids(
        self, since: str, result: PullResult, history_since: dict[str, str] | None = None
    ) -> tuple[set[str], str, Deleted]:
        """Return the plans whose CarePlan, CareTeam, Goals or check-ins someone else changed after `since`, or
        one of whose linked resources the EHR deleted at or after `history_since[type]` (a type not named, or
        None: its deletions are not asked); the newest `lastUpdated` the searches saw (the next cursor, in the
        server's own clock); and the links to the deleted resources.

        A resource whose version is the one planbridge last wrote or read is not a change to pull. Every
        search (the four by planbridge's identifiers, and the adopted plans' by `_id`) goes in one `batch`
        request when the server takes batches, the histories read last (see `_search_all`).
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
        histories: dict[str, dict[str, str]] = {}
        if history_since and self._history_allowed():
            histories = {
                rtype: {"_since": history_since[rtype], "_count": str(HISTORY_PAGE)}
                for rtype in HISTORY_TYPES
                if rtype in history_since
            }
        answers, history_entries = self._search_all(searches, result, histories)
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
            deleted = self._deleted_links(history_entries)
        # The adopted plans' resources may carry no planbridge identifier: searched by the ids their links name.
        for (rtype, _), found in zip(searches[len(kinds) :], answers[len(kinds) :], strict=True):
            for resource in found:
                newest = max(newest, resource.get("meta", {}).get("lastUpdated", since))
                for plan_id, version in versions.get((rtype, str(resource.get("id"))), []):
                    if version != resource.get("meta", {}).get("versionId"):
                        plan_ids.add(plan_id)
        plan_ids |= set(deleted.links)
        return plan_ids, newest, deleted

    def history_since(self, cursor: str | None) -> dict[str, str]:
        """Return, for each type of HISTORY_TYPES some plan links, from when to ask the server's history for its
        deleted resources: the newest version the previous read of that history listed (`history_since_cursor`,
        so each pull reads only what was written since the last one, however long planbridge's own resources stay
        unchanged); without one, the pull's cursor; before the first pull, an hour before the least recently
        synced link of that type (a deletion that matters came after planbridge last read or wrote it). A type no
        plan links is left out (nothing to look for): no link at all, no history read."""
        with self.uow:
            linked = self.uow.links.linked_types(HISTORY_TYPES)
            read = {rtype: self.uow.sync.cursor(history_since_cursor(rtype)) for rtype in linked}
            oldest = {rtype: self.uow.links.oldest_sync(rtype) for rtype in linked if not read[rtype] and not cursor}
        since: dict[str, str] = {}
        for rtype in linked:
            start = read[rtype] or cursor or oldest.get(rtype)
            if isinstance(start, datetime):
                start = (start - FIRST_SINCE_MARGIN).isoformat().replace("+00:00", "Z")
            if start:
                since[rtype] = start
        return since

    def _deleted_links(self, histories: dict[str, list[dict[str, Any]] | None]) -> Deleted:
        """Trace the resources each history shows deleted to the plans whose links name them (one query per type
        and 200 ids). A link already marked with that very delete (its plan was pulled for it and its CarePlan
        was gone: see Puller._settle_deleted_links) is not traced again."""
        deleted = Deleted()
        for rtype, entries in histories.items():
            newest = history_newest(entries or [])
            if newest is not None:
                deleted.seen[rtype] = newest
            gone = deleted_in_history(entries or [], rtype)
            traced = 0
            for link in self.uow.links.naming(rtype, sorted(gone)) if gone else []:
                version = gone.get(link.fhir_id) or ""
                if link.deleted_version is not None and link.deleted_version == version:
                    continue
                deleted.links.setdefault(link.plan_id, {})[link.local_key] = (link.fhir_id, link.version_id, version)
                traced += 1
            if traced:
                log.info("%d deleted %s resources name %d links", len(gone), rtype, traced)
        return deleted

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

    def _search_all(
        self,
        searches: list[tuple[str, dict[str, str]]],
        result: PullResult,
        histories: dict[str, dict[str, str]] | None = None,
    ) -> tuple[list[list[dict[str, Any]]], dict[str, list[dict[str, Any]] | None]]:
        """Run the searches; return each one's matches, every page (`next` links followed exactly), and, for each
        type `histories` gives the parameters of a `<Type>/_history` read for, every entry of its answer (deletes
        included; None when the server has no type-level history).

        One `batch` request carries them all, the histories last (up to BATCH_ENTRIES a request), unless this
        server refused a batch within BATCH_RETRY (remembered in sync_cursors, see `batch_cursor`): then, and
        for any search the batch did not answer completely (an error for that entry, a page short of its total
        with no `next` link), each goes as a request of its own, whose refusal fails the pull (the cursor
        stays); a history's refusal by a server without it (HISTORY_REFUSALS) is remembered instead, and no
        other history is asked on its own after it.
        """
        histories = histories or {}
        before = self.client.requests_sent
        answers: list[list[dict[str, Any]] | None] = [None] * len(searches)
        history_entries: dict[str, list[dict[str, Any]] | None] = dict.fromkeys(histories)
        pending = set(histories)  # histories not answered yet, neither read nor refused
        kinds = list(histories)
        requests = [{"method": "GET", "url": search_url(rtype, params)} for rtype, params in searches]
        requests += [{"method": "GET", "url": search_url(f"{rtype}/_history", histories[rtype])} for rtype in kinds]
        if searches and self._batch_allowed():
            try:
                for start in range(0, len(requests), BATCH_ENTRIES):
                    part = self.client.batch(requests[start : start + BATCH_ENTRIES])
                    for at, entry in enumerate(part, start):
                        if at < len(searches):
                            answers[at] = self._batch_answer(searches[at][1], entry, "searchset")
                            continue
                        rtype = kinds[at - len(searches)]
                        found, done = self._history_answer(histories[rtype], entry)
                        if done:
                            history_entries[rtype] = found
                            pending.discard(rtype)
                        if found is None and done:  # refused: the server has no type-level history
                            pending.clear()
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
        for rtype in kinds:
            if rtype in pending:
                history_entries[rtype] = found = self._history_alone(rtype, histories[rtype])
                if found is None:  # refused: the other types are not asked either
                    pending.clear()
        result.requests += self.client.requests_sent - before
        return out, history_entries

    def _batch_answer(self, params: dict[str, str], entry: dict[str, Any], kind: str) -> list[dict[str, Any]] | None:
        """Return every entry of one batch entry's answer (a `searchset` or a `history` Bundle), page after page
        (`next` links followed exactly); None where the batch did not answer it completely: an error status, not
        that kind of Bundle, or a page short of its `total` (or as full as `_count` asks, with no total) that
        gives no `next` link (as FhirClient.search_batch tells them)."""
        status = str((entry.get("response") or {}).get("status", ""))
        bundle = entry.get("resource")
        if not status.startswith("2") or not isinstance(bundle, dict) or bundle.get("type") != kind:
            return None
        if not _next_link(bundle):
            count, ids = params.get("_count"), params.get("_id")
            total, held = bundle.get("total"), _matched(bundle, kind)
            short = isinstance(total, int) and total > held
            full = total is None and count is not None and count.isdigit() and held >= int(count)
            full = full and not (ids and held >= len(ids.split(",")))  # every id asked for: nothing more
            if short or full:
                return None
        return self._pages(bundle, kind)

    def _pages(self, bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        """Every entry from this page on, following `next` links exactly as given. A history's deletes have no
        resource and are kept; a search's entries without one are not (as FhirClient.pages_from)."""
        found: list[dict[str, Any]] = []
        while True:
            found.extend(_entries(bundle, kind))
            next_url = _next_link(bundle)
            if not next_url:
                return found
            bundle = self.client.request("GET", next_url).json()

    def _history_answer(
        self, params: dict[str, str], entry: dict[str, Any]
    ) -> tuple[list[dict[str, Any]] | None, bool]:
        """Read the batch's answer to the history: (its entries, True) when complete; (None, True) when the
        server does not have type-level history (remembered); (None, False) to read it again on its own."""
        found = self._batch_answer(params, entry, "history")
        if found is not None:
            return found, True
        status = str((entry.get("response") or {}).get("status", ""))[:3]
        if status.isdigit() and int(status) in HISTORY_REFUSALS:
            self._refuse_history(int(status))
            return None, True
        return None, False

    def _history_alone(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]] | None:
        """Read `<Type>/_history` as a request of its own, every page; None when the server does not have it
        (remembered). Any other failure fails the pull, as a search's does."""
        try:
            bundle = self.client.request("GET", f"{resource_type}/_history", params=params).json()
        except FhirError as exc:
            if exc.status in HISTORY_REFUSALS:
                self._refuse_history(exc.status)
                return None
            raise
        if not isinstance(bundle, dict) or bundle.get("type") != "history":
            self._refuse_history(200)
            return None
        return self._pages(bundle, "history")

    def _history_allowed(self) -> bool:
        """Tell whether to ask the server's history: yes unless it refused one within BATCH_RETRY."""
        with self.uow:
            state = self.uow.sync.cursor(history_cursor(self.client.base_url)) or ""
        return not _refused_within(state, self.clock())

    def _refuse_history(self, status: int | None) -> None:
        log.warning(
            "the FHIR server answered a type-level history read HTTP %s: incremental pulls do not see deleted "
            "goals, care teams, check-ins or care plans for %d h",
            status,
            BATCH_RETRY.total_seconds() // 3600,
        )
        with self.uow:
            self.uow.sync.set_cursor(history_cursor(self.client.base_url), f"refused {self.clock().isoformat()}"[:64])
            self.uow.commit()

    def _batch_allowed(self) -> bool:
        """Tell whether to send searches as a batch: yes unless this server refused one within BATCH_RETRY."""
        with self.uow:
            self._batch_state = self.uow.sync.cursor(batch_cursor(self.client.base_url)) or ""
        return not _refused_within(self._batch_state, self.clock())

    def _remember_batch(self, value: str) -> None:
        with self.uow:
            self.uow.sync.set_cursor(batch_cursor(self.client.base_url), value[:64])
            self.uow.commit()
        self._batch_state = value


def _refused_within(state: str, now: datetime) -> bool:
    """Whether a remembered `refused <instant>` is less than BATCH_RETRY old (anything else: not refused)."""
    word, _, when = state.partition(" ")
    if word != "refused":
        return False
    try:
        refused = datetime.fromisoformat(when)
    except ValueError:
        return False
    with contextlib.suppress(TypeError):  # a naive instant against an aware clock: try again
        return now - refused < BATCH_RETRY
    return False


def _next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link") if isinstance(bundle.get("link"), list) else []
    return next((link.get("url") for link in links if isinstance(link, dict) and link.get("relation") == "next"), None)


def _entries(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """A page's entries: a search's with a resource (matches and includes), a history's all (deletes have none)."""
    entries = [e for e in bundle.get("entry", []) if isinstance(e, dict)]
    if kind == "history":
        return entries
    return [e for e in entries if "resource" in e]


def _matched(bundle: dict[str, Any], kind: str) -> int:
    """How many of a page's entries count toward its `total`: a search's matches (not its includes), every
    entry of a history."""
    if kind == "history":
        return len(_entries(bundle, kind))
    return sum(1 for e in _entries(bundle, kind) if e.get("search", {}).get("mode", "match") == "match")
