"""Goals the EHR deleted: found from the CarePlan's references that no longer resolve.

A pulled CarePlan that names `Goal/X` which the search could not include names a deleted Goal (or one
it cannot see). Absence alone cannot tell "deleted in the EHR" from "not pushed yet" (a push whose
answer was lost may have created X just before the EHR deleted it), so the Goal's history is read
(`GET Goal/X/_history`, https://hl7.org/fhir/R4/http.html#history: a deleted resource keeps its
versions) to learn which of the plan's goals it was. Such a goal is never dropped silently nor
written again unseen: the merge makes it a conflict for the team to decide.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from service.fhir.client import FhirClient
from service.fhir.errors import FhirError

log = logging.getLogger(__name__)
MAX_LOOKUPS = 20  # per CarePlan; a CarePlan naming more deleted Goals than this is read in later pulls


def unresolved_goal_refs(careplan: dict[str, Any], index: dict[str, Any]) -> list[str]:
    """Return the `Goal/id` references of the CarePlan that the pulled resources do not hold."""
    refs = [r.get("reference", "") for r in careplan.get("goal", []) if isinstance(r, dict)]
    return [ref for ref in refs if ref.startswith("Goal/") and ref.count("/") == 1 and ref not in index]


def deleted_goals(client: FhirClient, refs: list[str], goal_system: str, plan_id: str) -> dict[str, str]:
    """Return {`Goal/id`: goal id in the plan} for the references whose history shows one of the plan's goals."""
    found: dict[str, str] = {}
    for ref in refs[:MAX_LOOKUPS]:
        try:
            history = client.request("GET", f"{ref}/_history").json()
        except FhirError as exc:  # a server without instance history, or a Goal it never had
            log.info("plan %s: the history of a deleted goal could not be read: %s", plan_id, exc.code)
            continue
        for entry in history.get("entry", []):
            resource = entry.get("resource") or {}
            value = next(
                (i.get("value", "") for i in resource.get("identifier", []) if i.get("system") == goal_system), ""
            )
            if value.startswith(f"{plan_id}/"):
                found[ref] = value.split("/", 1)[1]
                break
    return found


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
