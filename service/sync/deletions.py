"""Goals the EHR deleted: found from the CarePlan's references that no longer resolve.

A pulled CarePlan that names `Goal/X` which the search could not include names a deleted Goal (or one
it cannot see). Absence alone cannot tell "deleted in the EHR" from "not pushed yet" (a push whose
answer was lost may have created X just before the EHR deleted it), so the Goal's history is read
(`GET Goal/X/_history`, https://hl7.org/fhir/R4/http.html#history: a deleted resource keeps its
versions) to learn which of the plan's goals it was. Such a goal is never dropped silently nor
written again unseen: the merge records it as deleted in the EHR (`removed_in_ehr`, see
service.sync.merge.record_removals), or makes it a conflict when the team changed it too.

An item recorded as removed in the EHR stays in the plan and is never sent: `on_server` is the plan
document as the server should hold it.

A reference the pull would keep as it came (a CarePlan's goal or an activity's goal the mapping does not model,
a Goal's extension naming another Goal) to a Goal the server no longer holds is dropped from what the pull
reads (`kept_goal_refs`, `absent_goals`, `without_refs`): a server that checks references on write (HAPI's
default, Medplum's `checkReferencesOnWrite`) refuses every write that still names it (400, HAPI-1096/1094).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from mappings import datatypes as dt
from service.fhir.client import FhirClient
from service.fhir.errors import FhirError

log = logging.getLogger(__name__)
MAX_LOOKUPS = 20  # per CarePlan; a CarePlan naming more deleted Goals than this is read in later pulls
MAX_ABSENT_LOOKUPS = 50  # Goal ids in the one `Goal?_id=` search per CarePlan; more are looked up in later pulls
# A literal reference to a Goal on this server (also to one of its versions): what a server checks on write.
GOAL_REFERENCE = re.compile(r"(Goal/[A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?")


def unresolved_goal_refs(careplan: dict[str, Any], index: dict[str, Any]) -> list[str]:
    """Return the `Goal/id` references of the CarePlan that the pulled resources do not hold."""
    refs = [r.get("reference", "") for r in careplan.get("goal", []) if isinstance(r, dict)]
    return [ref for ref in refs if ref.startswith("Goal/") and ref.count("/") == 1 and ref not in index]


def kept_goal_refs(careplan: dict[str, Any], index: dict[str, Any]) -> list[str]:
    """Return the `Goal/id` the pulled CarePlan, and the pulled Goals it names, refer to literally (anywhere: its
    goals, its activities' goals, extensions, contained resources) that the pulled resources do not hold, first
    seen first. These are what the pull would keep as they came and a push would write back."""
    named = [r.get("reference") for r in careplan.get("goal", []) if isinstance(r, dict)]
    goals = [index[ref] for ref in named if isinstance(ref, str) and ref in index]
    found: dict[str, None] = {}
    for resource in (careplan, *goals):
        for ref in _references(resource):
            goal = _goal_of(ref)
            if goal is not None and goal not in index:
                found.setdefault(goal)
    return list(found)


def absent_goals(client: FhirClient, refs: list[str]) -> tuple[set[str], int]:
    """Return which of these `Goal/id` name no Goal the server holds (deleted, or never there), and the requests
    spent: one search `Goal?_id=a,b,…` for the first MAX_ABSENT_LOOKUPS of them, none for no reference. A search
    that fails, or that the server did not restrict to those ids, tells nothing: no reference is called absent."""
    ids = list(dict.fromkeys(ref.split("/", 1)[1] for ref in refs))[:MAX_ABSENT_LOOKUPS]
    if not ids:
        return set(), 0
    try:
        bundle = client.request("GET", "Goal", params={"_id": ",".join(ids), "_count": str(len(ids))}).json()
    except FhirError as exc:
        log.info("could not tell whether %d referenced goals are still on the server: %s", len(ids), exc.code)
        return set(), 1
    entries = bundle.get("entry", []) if isinstance(bundle, dict) else []
    held = {
        str(entry["resource"].get("id"))
        for entry in entries
        if isinstance(entry, dict)
        and isinstance(entry.get("resource"), dict)
        and (entry.get("search") or {}).get("mode", "match") == "match"
    }
    if not held <= set(ids):  # the server ignored `_id`: its answer says nothing about these
        return set(), 1
    return {f"Goal/{goal_id}" for goal_id in ids if goal_id not in held}, 1


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _goal_of(ref: str) -> str | None:
    """`Goal/id` for a literal reference to that Goal (`Goal/id` or `Goal/id/_history/n`), else None."""
    match = GOAL_REFERENCE.fullmatch(ref)
    return match.group(1) if match else None


REMOVED = "removed_in_ehr"  # the plan JSON key of an item the EHR deleted or removed (service.domain.model.Removal)


def deleted_goals(
    client: FhirClient,
    refs: list[str],
    goal_system: str,
    plan_id: str,
    known: Mapping[str, str] | None = None,
    not_held: set[str] | None = None,
) -> dict[str, tuple[str, str | None]]:
    """Return {`Goal/id`: (goal id in the plan, last version seen)} for the references whose history shows
    one of the plan's goals.

    `known`: `Goal/id` -> goal id in the plan, as the plan's links (and the marks of the EHR Goals its adopted
    goals were read from) name them. It is asked first: an adopted plan's goal read from the EHR's own Goal
    carries planbridge's identifier only once planbridge wrote it, so the history of a Goal the EHR deleted
    before then names no goal of the plan. planbridge's identifier in the history is the fallback. Either way
    the history is read: it tells the Goal was deleted, and its last version.

    `not_held`, when given, collects the references whose history the server answered 404 or 410 for: it holds
    no such Goal (any more), whichever goal it was.
    """
    found: dict[str, tuple[str, str | None]] = {}
    known = known or {}
    for ref in refs[:MAX_LOOKUPS]:
        try:
            history = client.request("GET", f"{ref}/_history").json()
        except FhirError as exc:  # a server without instance history, or a Goal it never had
            log.info("plan %s: the history of a deleted goal could not be read: %s", plan_id, exc.code)
            if not_held is not None and exc.status in (404, 410):
                not_held.add(ref)
            continue
        entries = [e for e in history.get("entry", []) if isinstance(e, dict)]
        versions = [str((entry.get("resource") or {}).get("meta", {}).get("versionId", "")) for entry in entries]
        last = _newest(versions)
        if ref in known:
            if entries:  # the server knew it: deleted (or unseen), never "not pushed yet"
                found[ref] = (known[ref], last)
            continue
        for entry in entries:
            resource = entry.get("resource") or {}
            value = next(
                (i.get("value", "") for i in resource.get("identifier", []) if i.get("system") == goal_system), ""
            )
            if value.startswith(f"{plan_id}/"):
                found[ref] = (value.split("/", 1)[1], last)
                break
    return found


def deleted_in_history(entries: Iterable[Any], resource_type: str = "Goal") -> dict[str, str | None]:
    """Return {id: version of the delete} of the resources a type-level history (`GET Goal/_history?_since=`, its
    entries newest first, https://hl7.org/fhir/R4/http.html#history) shows deleted last: an entry with
    `request.method` `DELETE` and no later version of the same resource in the answer (written again since: not
    deleted). The id comes from `request.url` (`Goal/7` or HAPI's `Goal/7/_history/3`, which also gives the
    version), else `fullUrl`; the version, else, from `response.etag`."""
    newest: dict[str, tuple[bool, str | None]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else {}
        url = str(request.get("url") or "")
        parts = url.split("?")[0].split("/")
        if len(parts) >= 2 and parts[0] == resource_type:
            fhir_id, version = parts[1], parts[3] if len(parts) == 4 and parts[2] == "_history" else None
        else:
            fhir_id = str(resource.get("id") or str(entry.get("fullUrl") or "").rstrip("/").rsplit("/", 1)[-1])
            version = None
        if not fhir_id or (resource and resource.get("resourceType") not in (None, resource_type)):
            continue
        etag = str((entry.get("response") or {}).get("etag") or "") if isinstance(entry.get("response"), dict) else ""
        version = version or resource.get("meta", {}).get("versionId") or (etag.split('"')[1] if '"' in etag else None)
        deleted = str(request.get("method", "")).upper() == "DELETE"
        seen = newest.get(fhir_id)
        if seen is None or _later(version, seen[1]):
            newest[fhir_id] = (deleted, version)
    return {fhir_id: version for fhir_id, (deleted, version) in newest.items() if deleted}


def _later(version: str | None, than: str | None) -> bool:
    """Whether a history entry of this version is newer than one already seen: by number when both are numbers,
    else not (the history lists the newest first)."""
    return bool(version and than and version.isdigit() and than.isdigit() and int(version) > int(than))


def known_goals(links: Iterable[Any], goals: Iterable[Any]) -> dict[str, str]:
    """Return `Goal/id` -> goal id in the plan for the Goals the plan knows by resource id: its links (`fhir_links`
    rows keyed `goal:<goal id>`), then, for a link already dropped, the EHR Goal each adopted goal was read from
    (its `fhir_extra` mark, mappings.datatypes.SOURCE, which a goal written again as a new Goal no longer has)."""
    known: dict[str, str] = {}
    for link in links:
        if link.resource_type == "Goal" and str(link.local_key).startswith("goal:"):
            known[f"Goal/{link.fhir_id}"] = link.local_key.removeprefix("goal:")
    for goal in goals:
        source = goal.fhir_extra.get(dt.SOURCE) if isinstance(goal.fhir_extra, dict) else None
        if isinstance(source, str) and source.startswith("Goal/") and goal.id not in known.values():
            known.setdefault(source, goal.id)
    return known


def _newest(versions: list[str]) -> str | None:
    """The newest of a history's version ids: the greatest when all are numbers (HAPI numbers them), else the
    first, as a history Bundle lists the newest first (Medplum's ids are UUIDs, which have no order)."""
    given = [v for v in versions if v]
    if given and all(v.isdigit() for v in given):
        return max(given, key=int)
    return given[0] if given else None


def without_refs(resource: dict[str, Any], refs: set[str]) -> dict[str, Any]:
    """Return a copy of the resource (a CarePlan, a Goal) that no longer names these (deleted) Goals: a list's
    reference to one (a CarePlan's goal, an activity's goal) is left out, and so is an extension naming one
    anywhere inside (a Goal's replacement), and a list left empty goes with its key. The resource itself is
    returned when it names none of them."""
    if not refs or not any(_goal_of(ref) in refs for ref in _references(resource)):
        return resource
    out = _without(copy.deepcopy(resource), refs)
    assert isinstance(out, dict)
    return out


def _names(item: Any, refs: set[str]) -> bool:
    """Tell whether a list item goes: a reference to one of `refs`, or an extension naming one anywhere."""
    if not isinstance(item, dict):
        return False
    ref = item.get("reference")
    if isinstance(ref, str) and _goal_of(ref) in refs:
        return True
    extension = isinstance(item.get("url"), str) and "resourceType" not in item
    return extension and any(_goal_of(r) in refs for r in _references(item))


def _without(node: Any, refs: set[str]) -> Any:
    if isinstance(node, list):
        return [_without(item, refs) for item in node if not _names(item, refs)]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            kept = _without(value, refs)
            if isinstance(value, list) and value and not kept:
                continue  # every item went: the element goes
            out[key] = kept
        return out
    return node


def prune_goal_references(document: dict[str, Any]) -> dict[str, Any]:
    """Return the plan document without references to goals it does not hold (steps' goals, `replaces`).

    A goal held out of a push (deleted in the EHR, its conflict open) or given up by a resolution
    must not leave a step or a revision naming it: the mapping would refuse the whole plan.
    """
    ids = {g.get("id") for g in document.get("goals", [])}
    steps = document.get("steps", [])
    goals = document.get("goals", [])
    if all(set(s.get("goal_ids", [])) <= ids for s in steps) and all(g.get("replaces") in (None, *ids) for g in goals):
        return document
    out = copy.deepcopy(document)  # as the codec writes it: no key for None or an empty list
    for step in out.get("steps", []):
        kept = [g for g in step.pop("goal_ids", []) if g in ids]
        if kept:
            step["goal_ids"] = kept
    for goal in out.get("goals", []):
        if goal.get("replaces") not in (None, *ids):
            del goal["replaces"]
    return out


def on_server(document: dict[str, Any]) -> dict[str, Any]:
    """Return the plan document without the items recorded as removed in the EHR (`removed_in_ehr`).

    Goals and steps so marked are left out (and references to such goals pruned); a member so marked
    is left out unless something else in the plan still names them (then they stay, off the team), and so
    is anyone off the team whom only the left-out items named (the server has no trace of them).
    The document itself is returned when nothing is marked.
    """
    marked = {
        key: [i.get("id") for i in document.get(key, []) if isinstance(i, dict) and i.get(REMOVED)]
        for key in ("goals", "steps", "team")
    }
    if not any(marked.values()):
        return document
    out = copy.deepcopy(document)
    for key in ("goals", "steps"):
        if marked[key]:
            kept = [i for i in out.get(key, []) if not i.get(REMOVED)]
            if kept:
                out[key] = kept
            else:
                out.pop(key, None)
    # people off the team whom only the left-out items named go too
    rest = json.dumps({k: v for k, v in out.items() if k != "team"})
    named_before = json.dumps({k: v for k, v in document.items() if k != "team"})
    team = []
    for member in out.get("team", []):
        named = f'"{member.get("id")}"'
        if member.get("in_team") is False and named in named_before and named not in rest:
            continue  # off the team, and only what the EHR removed named them: the server has no trace
        if member.get(REMOVED):
            if named not in rest:
                continue
            member = {k: v for k, v in member.items() if k != REMOVED}
            member.pop("in_team", None)
            member["in_team"] = False
        team.append(member)
    if team:
        out["team"] = team
    else:
        out.pop("team", None)
    return prune_goal_references(out)


def written_again(document: dict[str, Any], path: str, theirs: Any) -> list[str]:
    """Make each goal the EHR deleted (or took out of the CarePlan) that a resolution (`ours`, `value`) writes
    again a goal of its own; return their ids. `document` is changed in place.

    A goal the server side of the conflict lacks: the goal of a conflict on one goal (`goals[id=g]`, theirs
    null), or each goal of a conflict on the whole list (`goals`) that the server's list lacks. It is written as a
    new Goal: it no longer stands for the EHR's deleted Goal it was read from. Its mark of that source
    (`_planbridge_source`, mappings.datatypes.remember_source) goes, so references the plan keeps as they came to
    the deleted Goal stay as they are rather than follow the new one (a CarePlan naming the new Goal twice, a
    step naming the new Goal beside the revision that replaced it); and the caller forgets its link
    (`goal:<id>`), so the push creates it (conditional on planbridge's identifier) instead of writing onto the
    deleted id (`PUT Goal/<id>`: a 404 or 410 for ever, or the deleted Goal resurrected)."""
    name, _, rest = path.partition("[id=")
    if name != "goals":
        return []
    if rest:
        if theirs is not None or not rest.endswith("]") or "]" in rest[:-1]:
            return []
        wanted = {rest[:-1]}
    else:
        on_server = {str(g.get("id")) for g in theirs or [] if isinstance(g, dict)}
        wanted = {str(g.get("id")) for g in document.get("goals", []) if isinstance(g, dict)} - on_server
    again = []
    for n, goal in enumerate(document.get("goals", [])):
        if isinstance(goal, dict) and str(goal.get("id")) in wanted and not goal.get(REMOVED):
            again.append(str(goal["id"]))
            extra = goal.get("fhir_extra")
            if isinstance(extra, dict) and dt.SOURCE in extra:
                document["goals"][n] = {**goal, "fhir_extra": {k: v for k, v in extra.items() if k != dt.SOURCE}}
    return again


_ITEM_KINDS = {"goals": ("deleted", "lifecycle_status"), "steps": ("removed", None), "team": ("removed", None)}


def accept_removal(document: dict[str, Any], path: str, theirs: Any, at: str) -> bool:
    """Take the EHR's side of a conflict on a whole item it deleted or removed (`goals[id=g]`, theirs null):
    mark the item `removed_in_ehr` in the plan document instead of dropping it, so it keeps its
    agreements and notes. Return False (nothing done) for any other conflict."""
    name, _, rest = path.partition("[id=")
    if theirs is not None or name not in _ITEM_KINDS or not rest.endswith("]") or "]" in rest[:-1]:
        return False
    item_id = rest[:-1]
    items = document.get(name, [])
    at_index = next((n for n, i in enumerate(items) if isinstance(i, dict) and str(i.get("id")) == item_id), None)
    if at_index is None:
        return False
    how, status = _ITEM_KINDS[name]
    item = {**items[at_index], REMOVED: {"at": at, "how": how}}
    if status is not None:
        item[status] = "entered-in-error"
    if name == "team":
        item["in_team"] = False
    items[at_index] = item
    return True
