"""The searches of a pull (service.sync.pull): what a pull did, and how it asks the server.

A pull reads CarePlans with everything a plan needs in one search, and the check-ins their Goals name in
one more. An incremental pull first asks which plans changed since the last successful pull (`_lastUpdated`,
every search in one `batch` request); a server that refuses batches is searched one type a request, and
that is remembered a while (sync_cursors, see `batch_cursor`).
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
from service.fhir.client import BatchUnsupported
from service.sync.adopt import TRACKED, adopted_links
from service.sync.push import local_key

log = logging.getLogger("service.sync.pull")  # the puller's records, under the name they always had
CHUNK = 50
BATCH_ENTRIES = 100  # searches per batch request
BATCH_RETRY = timedelta(hours=24)  # after a server refused a batch, pulls search one by one for this long


def batch_cursor(base_url: str) -> str:
    """Return the name under which a server's refusal of batches is remembered (sync_cursors, 64 characters):
    its value is `refused <instant>`, or `accepted <instant>` once a later batch went through."""
    return f"fhir-batch:{hashlib.sha256(base_url.encode()).hexdigest()[:40]}"


@dataclass
class PullResult:
    """What a pull did, plan by plan: unchanged, updated, merged (push pending), conflicted or new."""

    outcomes: dict[str, str] = field(default_factory=dict)
    requests: int = 0


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
