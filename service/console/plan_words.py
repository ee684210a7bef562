"""The words a plan's console page shows: times, the patient and members named as the settings allow, goals'
agreements, targets, status changes and contingencies, and the plan's history as a timeline."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from service.console import chart, security
from service.domain.model import Goal, Member, Plan
from service.sync.adopt import IMPORTED

STATE_WORDS = {"in_sync": "In sync", "pending": "Pending", "failed": "Failed", "conflicted": "Conflicted"}


def _instant(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "never"


def patient_label(plan: Plan, show_names: bool) -> str:
    """Return how the console names a plan's patient: the display name when allowed, else the masked MRN."""
    if show_names and plan.patient.display_name:
        return plan.patient.display_name
    return security.mask_mrn(plan.patient.mrn)


def _member_name(plan: Plan, member_id: str | None, show_names: bool) -> str:
    if not member_id:
        return "nobody yet"
    member = plan.member(member_id)
    if member is None:
        return member_id
    if member.kind == "patient" and not show_names:
        return "the patient"
    return member.name or member.id


def _role(member: Member) -> str:
    return chart.concept_text(member.role) or member.kind.replace("-", " ")


def _agreements(plan: Plan, goal: Goal, show_names: bool) -> list[dict[str, str]]:
    """Return each team member's agreement with a goal in words; members who gave none are pending."""
    seen = {a.member_id for a in goal.agreements}
    rows = [
        {"who": _member_name(plan, a.member_id, show_names), "status": a.status or "pending"} for a in goal.agreements
    ]
    rows += [
        {"who": _member_name(plan, m.id, show_names), "status": "pending"}
        for m in plan.team
        if m.in_team and m.id not in seen
    ]
    return rows


def _target_rows(goal: Goal) -> list[dict[str, str]]:
    rows = []
    for target in goal.targets:
        words = chart.target_bounds(target)[2] or target.text or chart.concept_text(target.concept)
        if target.boolean is not None:
            words = "yes" if target.boolean else "no"
        due = target.due_date or chart.quantity_text(target.due_duration) or "no due date"
        rows.append({"measure": chart.concept_text(target.measure) or "—", "detail": words or "—", "due": due})
    return rows


def _strict(subscribers: dict[int, tuple[str, str]], delivery: dict[str, Any]) -> bool:
    return subscribers.get(delivery["subscription_id"], ("", ""))[1] == "strict"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _status_change(goal: Goal) -> str:
    """Return when and why a goal's status last changed, in words ("" when neither is recorded)."""
    parts = []
    when = chart.parse_instant(goal.status_date)
    if when is not None:
        parts.append(f"since {chart.day_label(when.date())}")
    if goal.status_reason:
        parts.append(f"reason: {goal.status_reason}")
    return "; ".join(parts)


def _contingencies(plan: Plan, goal: Goal, show_names: bool) -> list[dict[str, str]]:
    """Return a goal's "if …, then …" plans with who acts on each, in words."""
    return [
        {"if": c.if_, "then": c.then, "owner": _member_name(plan, c.owner, show_names) if c.owner else "anyone"}
        for c in goal.contingencies
    ]


ITEM = re.compile(r"(goals|steps|team)\[id=([^\]]+)\]")


def _path_words(plan: Plan, path: str, names: dict[str, str]) -> str:
    """A plan path with its goal, step or member named: goals[id=g].priority -> goal “Walk more”.priority."""

    def named(match: re.Match[str]) -> str:
        kind, item_id = match.group(1), match.group(2)
        if kind == "goals":
            goal = plan.goal(item_id)
            return f"goal “{chart.concept_text(goal.description)}”" if goal else f"goal {item_id}"
        if kind == "steps":
            step = next((s for s in plan.steps if s.id == item_id), None)
            return f"step “{step.title or step.id}”" if step else f"step {item_id}"
        return f"team member {names.get(item_id, item_id)}"

    return "the whole plan" if path == "*" else ITEM.sub(named, path)


def _grouped_paths(plan: Plan, paths: list[str], names: dict[str, str]) -> list[str]:
    """The paths a change touched, in words, those of one goal, step or member together: the paths
    goals[id=g].lifecycle_status and goals[id=g].status_reason -> goal “Walk more”: lifecycle status, status reason."""
    grouped: dict[str, list[str]] = {}
    for path in paths:
        match = ITEM.match(path)
        item = _path_words(plan, match.group(0), names) if match else ""
        rest = path[match.end() :].lstrip(".") if match else path
        grouped.setdefault(item, []).append(_path_words(plan, rest, names).replace("_", " ") if rest else "")
    out = []
    for item, fields in grouped.items():
        fields = [f for f in fields if f]
        out.append(f"{item}: {', '.join(fields)}" if item and fields else item or ", ".join(fields))
    return out


def _timeline_entry(plan: Plan, entry: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A plan history entry in words: when, from whom (the team system and members, or the EHR's resource
    and version), what kind of change, and what it changed."""
    at = chart.parse_instant(entry["at"])
    what = entry["event_type"].replace("ehr.", "EHR ").replace(".", " ").replace("_", " ")
    if entry["event_type"] == IMPORTED:
        who = "an import (planbridge plans import)"
    elif entry["source"] == "team" and entry["team"]:
        members = ", ".join(names.get(m, m) for m in entry["team"]["members"])
        who = f"the team, through {entry['team']['sender']}" + (f" ({members})" if members else "")
    else:
        ehr = entry["ehr"] or {}
        version = f" version {ehr['resource_version']}" if ehr.get("resource_version") else ""
        outcome = f", {ehr['outcome']}" if ehr.get("outcome") else ""
        who = f"the EHR: {ehr.get('resource_type')}/{ehr.get('resource_id')}{version}{outcome}"
    paths = _grouped_paths(plan, entry["paths"], names)
    more = entry["paths_total"] - len(entry["paths"])
    return {
        "at": at.strftime("%Y-%m-%d %H:%M UTC") if at else entry["at"],
        "source": entry["source"],
        "what": what[:1].upper() + what[1:],
        "who": who,
        "paths": paths,
        "more": more,
        "version": entry["plan_version"],
    }
