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
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from mappings import datatypes as dt
from service.fhir.client import FhirClient
from service.fhir.errors import FhirError

log = logging.getLogger(__name__)
MAX_LOOKUPS = 20  # per CarePlan; a CarePlan naming more deleted Goals than this is read in later pulls


def unresolved_goal_refs(careplan: dict[str, Any], index: dict[str, Any]) -> list[str]:
    """Return the `Goal/id` references of the CarePlan that the pulled resources do not hold."""
    refs = [r.get("reference", "") for r in careplan.get("goal", []) if isinstance(r, dict)]
    return [ref for ref in refs if ref.startswith("Goal/") and ref.count("/") == 1 and ref not in index]


REMOVED = "removed_in_ehr"  # the plan JSON key of an item the EHR deleted or removed (service.domain.model.Removal)


def deleted_goals(
    client: FhirClient,
    refs: list[str],
    goal_system: str,
    plan_id: str,
    known: Mapping[str, str] | None = None,
) -> dict[str, tuple[str, str | None]]:
    """Return {`Goal/id`: (goal id in the plan, last version seen)} for the references whose history shows
    one of the plan's goals.

    `known`: `Goal/id` -> goal id in the plan, as the plan's links (and the marks of the EHR Goals its adopted
    goals were read from) name them. It is asked first: an adopted plan's goal read from the EHR's own Goal
    carries planbridge's identifier only once planbridge wrote it, so the history of a Goal the EHR deleted
    before then names no goal of the plan. planbridge's identifier in the history is the fallback. Either way
    the history is read: it tells the Goal was deleted, and its last version.
    """
    found: dict[str, tuple[str, str | None]] = {}
    known = known or {}
    for ref in refs[:MAX_LOOKUPS]:
        try:
            history = client.request("GET", f"{ref}/_history").json()
        except FhirError as exc:  # a server without instance history, or a Goal it never had
            log.info("plan %s: the history of a deleted goal could not be read: %s", plan_id, exc.code)
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


def without_refs(careplan: dict[str, Any], refs: set[str]) -> dict[str, Any]:
    """Return a copy of the CarePlan that no longer names these (deleted) resources."""
    if not refs:
        return careplan
    out = copy.deepcopy(careplan)
    out["goal"] = [r for r in out.get("goal", []) if r.get("reference") not in refs]
    if not out["goal"]:
        del out["goal"]
    for activity in out.get("activity", []):
        detail = activity.get("detail")
        if isinstance(detail, dict) and "goal" in detail:
            detail["goal"] = [r for r in detail["goal"] if r.get("reference") not in refs]
            if not detail["goal"]:
                del detail["goal"]
    return out


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
