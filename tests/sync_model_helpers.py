"""Plan paths, diffs and the server reader of the sync model world (tests/sync_model_support.py).

Moved out of tests/sync_model_support.py unchanged; that module re-exports every name here.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient

SOURCE_KEY = "_planbridge_source"  # mappings.datatypes.SOURCE: where an EHR-authored resource came from
KINDS = (("CarePlan", "plan"), ("CareTeam", "careteam"), ("Goal", "goal"), ("Observation", "checkin"))
BOOKKEEPING = ("version", "updated_at")


# ---------------------------------------------------------------------------------------------- paths


def split_path(path: str) -> list[str | tuple[str, str]]:
    """Split a plan path as service.sync.merge names them.

    `goals[id=g.1].notes` -> ["goals", ("id", "g.1"), "notes"] (ids may hold dots).
    """
    parts: list[str | tuple[str, str]] = []
    name, i = "", 0
    while i < len(path):
        c = path[i]
        if c == ".":
            if name:
                parts.append(name)
            name = ""
        elif c == "[":
            if name:
                parts.append(name)
            name = ""
            end = path.index("]", i)
            key, _, ident = path[i + 1 : end].partition("=")
            parts.append((key, ident))
            i = end
        else:
            name += c
        i += 1
    if name:
        parts.append(name)
    return parts


def get_at(document: Any, path: str) -> Any:
    """Return the value at a plan path, None when it (or anything above it) is absent."""
    target = document
    for part in split_path(path):
        if isinstance(part, tuple):
            key, ident = part
            if not isinstance(target, list):
                return None
            target = next((i for i in target if isinstance(i, dict) and str(i.get(key)) == ident), None)
        elif isinstance(target, dict):
            target = target.get(part)
        else:
            return None
        if target is None:
            return None
    return target


def set_at(document: dict[str, Any], path: str, value: Any) -> None:
    """Set (None: remove) the value at a plan path; missing parents are made, as far as they can be."""
    parts = split_path(path)
    target: Any = document
    for n, part in enumerate(parts[:-1]):
        nxt = parts[n + 1]
        if isinstance(part, tuple):
            key, ident = part
            found = next((i for i in target if str(i.get(key)) == ident), None)
            if found is None:
                found = {key: ident}
                target.append(found)
            target = found
        else:
            if target.get(part) is None:
                target[part] = [] if isinstance(nxt, tuple) else {}
            target = target[part]
    last = parts[-1]
    if isinstance(last, tuple):
        key, ident = last
        at = next((n for n, i in enumerate(target) if str(i.get(key)) == ident), None)
        if value is None:
            if at is not None:
                del target[at]
        elif at is None:
            target.append(copy.deepcopy(value))
        else:
            target[at] = copy.deepcopy(value)
    elif value is None:
        target.pop(last, None)
    else:
        target[last] = copy.deepcopy(value)


IDENTITY_KEYS = ("id", "member_id")  # what identifies the items of a list, as service.sync.merge has it


def _identity(items: Any) -> str | None:
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        return None
    return next((k for k in IDENTITY_KEYS if all(k in i for i in items)), None)


def diff_paths(before: Any, after: Any, path: str = "") -> list[str]:
    """Return the paths whose values differ, named as service.sync.merge names them, item by item.

    Like `changed_paths`, except that a list of items with an identity that is absent on one side (plan JSON
    leaves empty lists out) is compared item by item with an empty one, not as one value: the EHR deleting a
    plan's last goal changes `goals[id=g]`, not `goals`.
    """
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for k in [*before, *(k for k in after if k not in before)]:
            out += diff_paths(before.get(k), after.get(k), f"{path}.{k}" if path else k)
        return out
    key = _identity(before) or _identity(after)
    if key is not None and isinstance(before or [], list) and isinstance(after or [], list):
        b = {i[key]: i for i in before or []}
        a = {i[key]: i for i in after or []}
        out = []
        for k in [*b, *(k for k in a if k not in b)]:
            out += diff_paths(b.get(k), a.get(k), f"{path}[{key}={k}]")
        return out
    return [path]


def under(path: str, other: str) -> bool:
    """True when `path` is `other` or lies inside it."""
    return path == other or path.startswith((f"{other}.", f"{other}["))


def related(a: str, b: str) -> bool:
    """True when one path lies under (or is) the other."""
    return under(a, b) or under(b, a)


def without_source(value: Any) -> Any:
    """Return a copy without the mapping's note of where an EHR-authored resource came from: planbridge
    re-creates such resources under its own identifier by design (docs/plan-format.md), which moves it."""
    if isinstance(value, dict):
        return {k: without_source(v) for k, v in value.items() if k != SOURCE_KEY}
    if isinstance(value, list):
        return [without_source(v) for v in value]
    return value


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan as the sync compares it: plan JSON without planbridge's own counters."""
    return without_source({k: v for k, v in codec.to_dict(plan).items() if k not in BOOKKEEPING})


def short(value: Any, limit: int = 160) -> str:
    """Return a value as compact JSON, cut to `limit` characters."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- clients


class WorkerKilled(BaseException):
    """The process running planbridge died: nothing after this point runs, nothing is recorded."""


class RecordingClient(FhirClient):
    """planbridge's FHIR client, unchanged, keeping a log of what it sent (method, path, params, outcome)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[str, str, Any, str]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = super().request(method, path, **kwargs)
        except Exception as exc:
            self.log.append((method, path, kwargs.get("params"), type(exc).__name__))
            raise
        self.log.append((method, path, kwargs.get("params"), str(response.status_code)))
        return response


class KilledAfterSending(RecordingClient):
    """A client whose process dies right after its first transaction reached the server (and was applied, or
    refused), before the answer is read: what a worker killed between sending and recording leaves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: str | None = None  # the server's status for the transaction that was sent

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        body = kwargs.get("json")
        is_transaction = method == "POST" and isinstance(body, dict) and body.get("type") == "transaction"
        if not is_transaction:
            return super().request(method, path, **kwargs)
        try:
            response = super().request(method, path, **kwargs)
            self.sent = str(response.status_code)
        except Exception as exc:  # refused: it still reached the server; the process dies all the same
            self.sent = type(exc).__name__
        raise WorkerKilled(f"killed after sending a transaction (server answered {self.sent})")


def plan_pulls(log: list[tuple[str, str, Any, str]], plan_id: str, base: str) -> bool:
    """True when a logged request read the plan's CarePlan by planbridge's identifier (a pull of it)."""
    wanted = f"{base}/plan|{plan_id}"
    for method, path, params, outcome in log:
        if method != "GET" or not path.startswith("CarePlan") or not outcome.startswith("2"):
            continue
        items = params.items() if isinstance(params, dict) else (params or [])
        for name, value in items:
            if name == "identifier" and wanted in str(value).split(","):
                return True
    return False


# ---------------------------------------------------------------------------------------------- server


@dataclass
class ServerPlan:
    """A plan's copy on the server, read as the puller reads it."""

    doc: dict[str, Any] | None  # the plan JSON the CarePlan maps to (None: no CarePlan)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Goal/12" -> the resource
    dangling: list[str] = field(default_factory=list)  # Goals the CarePlan names that the server does not hold

    def versions(self) -> dict[str, str]:
        return {key: r.get("meta", {}).get("versionId", "?") for key, r in self.resources.items()}


def without_dangling_goals(careplan: dict[str, Any], index: dict[str, Any]) -> dict[str, Any]:
    """Return the CarePlan without its references to Goals the server no longer holds.

    A reference to a Goal the EHR deleted is no value of its own: the EHR deleted the Goal, not the
    reference, and planbridge may drop such references when it next writes the CarePlan.
    """

    def kept(refs: list[Any]) -> list[Any]:
        return [
            r
            for r in refs
            if not (
                isinstance(r, dict) and str(r.get("reference", "")).startswith("Goal/") and r["reference"] not in index
            )
        ]

    out = copy.deepcopy(careplan)
    if "goal" in out:
        out["goal"] = kept(out["goal"])
        if not out["goal"]:
            del out["goal"]
    for activity in out.get("activity", []):
        detail = activity.get("detail")
        if isinstance(detail, dict) and "goal" in detail:
            detail["goal"] = kept(detail["goal"])
            if not detail["goal"]:
                del detail["goal"]
    return out


def _names_goal_not_in(value: Any, live: set[str] | dict[str, Any]) -> bool:
    """Tell whether `value` names, anywhere inside, a `Goal/id` that `live` does not hold."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("Goal/") and ref not in live:
            return True
        return any(_names_goal_not_in(v, live) for v in value.values())
    if isinstance(value, list):
        return any(_names_goal_not_in(v, live) for v in value)
    return False


def without_dangling_extensions(resource: dict[str, Any], live: set[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a Goal (or a goal's `fhir_extra`) without its extensions naming a Goal the server no longer holds (a
    replacement by a Goal the EHR deleted): like a CarePlan's reference to one, no value of its own, which
    planbridge drops when it reads it (a server checking every reference refuses a write naming it)."""
    extensions = resource.get("extension")
    if not isinstance(extensions, list) or not _names_goal_not_in(extensions, live):
        return resource
    out = dict(resource)
    out["extension"] = [e for e in extensions if not _names_goal_not_in(e, live)]
    if not out["extension"]:
        del out["extension"]
    return out


def without_refs_to(document: dict[str, Any], live: set[str] | dict[str, Any]) -> dict[str, Any]:
    """Return the plan document without the references to Goals the server does not hold that it keeps as they
    came (`careplan_extra.goal`, a step's `detail_extra.goal`): the counterpart of `without_dangling_goals`."""

    def kept(refs: Any) -> Any:
        if not isinstance(refs, list):
            return refs
        return [
            r
            for r in refs
            if not (
                isinstance(r, dict) and str(r.get("reference", "")).startswith("Goal/") and r["reference"] not in live
            )
        ]

    out = copy.deepcopy(document)
    for holder in [out.get("careplan_extra"), *(s.get("detail_extra") for s in out.get("steps", []))]:
        if isinstance(holder, dict) and "goal" in holder:
            holder["goal"] = kept(holder["goal"])
            if not holder["goal"]:
                del holder["goal"]
    for goal in out.get("goals", []):
        if isinstance(goal, dict) and isinstance(goal.get("fhir_extra"), dict):
            goal["fhir_extra"] = without_dangling_extensions(goal["fhir_extra"], live)
    return out


REMOVED = "removed_in_ehr"  # service.domain.model.Removal: an item the plan records as deleted in the EHR


def without_removed(document: dict[str, Any]) -> dict[str, Any]:
    """Return the plan document without the items it records as deleted or removed in the EHR (`removed_in_ehr`),
    and without references to such goals: they stay in the plan, and are by design never on the server.

    A member so marked who is still named elsewhere in the plan stays, off the team (as the server names them);
    someone off the team whom only the removed items named is not on the server either.
    """
    marked = {
        key: {i.get("id") for i in document.get(key, []) if isinstance(i, dict) and i.get(REMOVED)}
        for key in ("goals", "steps", "team")
    }
    if not any(marked.values()):
        return document
    out = copy.deepcopy(document)
    for key in ("goals", "steps"):
        kept = [i for i in out.get(key, []) if i.get("id") not in marked[key]]
        if kept:
            out[key] = kept
        else:
            out.pop(key, None)
    rest = json.dumps({k: v for k, v in out.items() if k != "team"})
    named_before = json.dumps({k: v for k, v in document.items() if k != "team"})
    team = []
    for member in out.get("team", []):
        named = f'"{member["id"]}"'
        if member.get("in_team") is False and named in named_before and named not in rest:
            continue  # off the team and named only by what the EHR removed: nothing on the server names them
        if member.get("id") in marked["team"]:
            if f'"{member["id"]}"' not in rest:
                continue
            member = {k: v for k, v in member.items() if k != REMOVED}
            member["in_team"] = False
        team.append(member)
    if team:
        out["team"] = team
    else:
        out.pop("team", None)
    for step in out.get("steps", []):
        kept = [g for g in step.get("goal_ids", []) if g not in marked["goals"]]
        if kept:
            step["goal_ids"] = kept
        else:
            step.pop("goal_ids", None)
    for goal in out.get("goals", []):
        if goal.get("replaces") in marked["goals"]:
            del goal["replaces"]
    return out


def held_out(document: dict[str, Any], open_conflicts: list[dict[str, Any]], server: dict[str, Any]) -> dict[str, Any]:
    """Return the plan document without references to goals an open conflict holds off the server, and without
    the items the plan records as removed in the EHR (`without_removed`).

    A goal the EHR deleted stays in the plan while its conflict (`goals[id=g]`) is open, and cannot be
    named on the server: what refers to it there (a step's goals, a revision's `replaces`) lies under
    that conflict too.
    """
    document = without_removed(document)
    held = {
        c["path"][len("goals[id=") : -1]
        for c in open_conflicts
        if c["path"].startswith("goals[id=") and c["path"].endswith("]") and "]." not in c["path"]
    }
    held = {g for g in held if get_at(server, f"goals[id={g}]") is None}
    if not held:
        return document
    out = copy.deepcopy(document)
    for step in out.get("steps", []):
        kept = [g for g in step.get("goal_ids", []) if g not in held]
        if kept:
            step["goal_ids"] = kept
        else:
            step.pop("goal_ids", None)
    for goal in out.get("goals", []):
        if goal.get("replaces") in held:
            del goal["replaces"]
    # People off the team whom only a held goal names (its proposer, an agreement's author...): the plan keeps
    # them with the goal, the server cannot name them any more. They lie under that goal's conflict too.
    rest = json.dumps(
        {
            **{k: v for k, v in out.items() if k != "team"},
            "goals": [g for g in out.get("goals", []) if g["id"] not in held],
        }
    )
    on_server = {m.get("id") for m in (server or {}).get("team", [])}
    team = [
        m for m in out.get("team", []) if m.get("in_team", True) or m.get("id") in on_server or f'"{m["id"]}"' in rest
    ]
    if team:
        out["team"] = team
    else:
        out.pop("team", None)
    return out


# ---------------------------------------------------------------------------------------------- world
