"""Three-way merge of plan documents: what we changed and what the EHR changed since the last sync.

Documents are the plan JSON (service.domain.codec). Objects merge key by key; lists of objects with
an identity (team members, goals, steps, check-ins by `id`; agreements by `member_id`) merge item by
item; any other value is a leaf. A leaf both sides changed differently is a conflict: the merged
document keeps our value there until someone resolves it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

BOOKKEEPING = frozenset({"version", "updated_at"})
IDENTITY_KEYS = ("id", "member_id")
MISSING: Any = object()


@dataclass(frozen=True)
class FieldConflict:
    """One path both sides changed: the value at the last sync, ours and theirs (None when absent)."""

    path: str
    base: Any
    ours: Any
    theirs: Any


def _identity(items: Any) -> str | None:
    """Return the key that identifies the items of a list, or None when it is a plain value."""
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        return None
    return next((k for k in IDENTITY_KEYS if all(k in i for i in items)), None)


def _keyed(items: Any, key: str) -> dict[Any, Any]:
    return {i[key]: i for i in items} if isinstance(items, list) else {}


def _plain(value: Any) -> Any:
    return None if value is MISSING else value


class _Merger:
    def __init__(self) -> None:
        self.conflicts: list[FieldConflict] = []

    def value(self, path: str, base: Any, ours: Any, theirs: Any) -> Any:
        if ours == theirs:
            return ours
        if ours == base:
            return theirs
        if theirs == base:
            return ours
        if isinstance(ours, dict) and isinstance(theirs, dict):
            return self.object(path, base if isinstance(base, dict) else {}, ours, theirs)
        key = _identity(ours) or _identity(theirs) or _identity(base)
        if key is not None and all(isinstance(v, list) or v is MISSING for v in (base, ours, theirs)):
            return self.items(path, key, base, ours, theirs)
        self.conflicts.append(FieldConflict(path, _plain(base), _plain(ours), _plain(theirs)))
        return ours

    def object(self, path: str, base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in [*ours, *(k for k in theirs if k not in ours)]:
            merged = self.value(
                f"{path}.{k}" if path else k, base.get(k, MISSING), ours.get(k, MISSING), theirs.get(k, MISSING)
            )
            if merged is not MISSING:
                out[k] = merged
        return out

    def items(self, path: str, key: str, base: Any, ours: Any, theirs: Any) -> list[Any]:
        b, o, t = _keyed(base, key), _keyed(ours, key), _keyed(theirs, key)
        order = [*o, *(k for k in t if k not in o)]
        if [k for k in o if k in t and k in b] == [k for k in b if k in o and k in t]:
            order = _theirs_order(list(o), list(t))  # only the server reordered what both hold: its order stands
        out = []
        for k in order:
            merged = self.value(f"{path}[{key}={k}]", b.get(k, MISSING), o.get(k, MISSING), t.get(k, MISSING))
            if merged is not MISSING:
                out.append(merged)
        return out


def _theirs_order(ours: list[Any], theirs: list[Any]) -> list[Any]:
    """Return theirs' order, each item only ours holds placed after the one before it in ours (first when none):
    a push maps the plan to FHIR and a pull maps it back in the server's order (members on the CareTeam before
    those off it), so a list the team did not reorder takes that order rather than pushing its own forever."""
    order = list(theirs)
    for n, k in enumerate(ours):
        if k not in order:
            before = next((ours[j] for j in range(n - 1, -1, -1) if ours[j] in order), None)
            order.insert(order.index(before) + 1 if before is not None else 0, k)
    return order


def strip_bookkeeping(document: dict[str, Any]) -> dict[str, Any]:
    """Return the document without planbridge's own version counters."""
    return {k: v for k, v in document.items() if k not in BOOKKEEPING}


def three_way_merge(
    base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]
) -> tuple[dict[str, Any], list[FieldConflict]]:
    """Merge `ours` and `theirs` against their common `base`; return the result and any conflicts."""
    merger = _Merger()
    merged = merger.object("", strip_bookkeeping(base), strip_bookkeeping(ours), strip_bookkeeping(theirs))
    return merged, merger.conflicts


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """Set the value at a conflict path (as three_way_merge names them) inside a plan document."""
    target: Any = document
    parts = _split(path)
    for part in parts[:-1]:
        target = _step(target, part, create=True)
    last = parts[-1]
    if isinstance(last, tuple):
        key, ident = last
        at = next((n for n, i in enumerate(target) if str(i.get(key)) == ident), None)
        if at is None:
            if value is not None:
                target.append(value)
        elif value is None:
            del target[at]
        else:
            target[at] = value  # in place: the order of the list is part of the plan
    elif value is None:
        target.pop(last, None)
    else:
        target[last] = value


def get_path(document: dict[str, Any], path: str) -> Any:
    """Return the value at a conflict path inside a plan document, None when it is absent."""
    target: Any = document
    for part in _split(path):
        try:
            target = _step(target, part, create=False)
        except (KeyError, TypeError):
            return None
    return target


def under(path: str, other: str) -> bool:
    """Return True when `path` is `other` or lies inside it (`goals[id=g].status` under `goals[id=g]`)."""
    return path == other or path.startswith((f"{other}.", f"{other}["))


def mask(document: dict[str, Any], held: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a plan document with the value at each held path replaced by the given one.

    A push of a plan with open conflicts sends this: every conflicted path carries the server's
    value, so the server keeps it until someone resolves the conflict. Inner paths go first, so a
    held parent (a goal the EHR deleted) wins over a held child.
    """
    out = copy.deepcopy(document)
    for path in sorted(held, key=len, reverse=True):
        try:
            set_path(out, path, copy.deepcopy(held[path]))
        except (KeyError, TypeError, AttributeError):
            continue  # the item holding the path is gone from the plan: nothing of it is sent
    return out


def _split(path: str) -> list[Any]:
    parts: list[Any] = []
    for chunk in path.split("."):
        name, _, rest = chunk.partition("[")
        if name:
            parts.append(name)
        while rest:
            selector, _, rest = rest.partition("]")
            key, _, ident = selector.partition("=")
            parts.append((key, ident))
            rest = rest[1:] if rest.startswith("[") else rest
    return parts


def _step(target: Any, part: Any, create: bool) -> Any:
    if isinstance(part, tuple):
        key, ident = part
        found = next((i for i in target if str(i.get(key)) == ident), None)
        if found is None:
            raise KeyError(f"no item with {key}={ident}")
        return found
    if part not in target and create:
        target[part] = {}
    return target[part]


def changed_paths(before: Any, after: Any, path: str = "") -> list[str]:
    """Return the paths (as three_way_merge names them) whose values differ between two documents."""
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for k in [*before, *(k for k in after if k not in before)]:
            if k not in BOOKKEEPING:
                out += changed_paths(before.get(k), after.get(k), f"{path}.{k}" if path else k)
        return out
    key = _identity(before) or _identity(after)
    if key is not None and isinstance(before, list) and isinstance(after, list):
        b, a = _keyed(before, key), _keyed(after, key)
        out = []
        for k in [*b, *(k for k in a if k not in b)]:
            out += changed_paths(b.get(k), a.get(k), f"{path}[{key}={k}]")
        return out
    return [path]


REMOVED = "removed_in_ehr"  # service.domain.model.Removal: an item the EHR deleted, recorded as such
ITEM_LISTS = (("goals", "goal"), ("steps", "step"), ("team", "member"))
ERROR_STATUS = {"goals": "lifecycle_status", "steps": "status"}  # where "entered-in-error" marks an item


def _referenced(document: dict[str, Any], member_id: str) -> bool:
    rest = {k: v for k, v in document.items() if k != "team"}
    return f'"{member_id}"' in json.dumps(rest)


def record_removals(
    deleted: dict[str, str | None],
    base: dict[str, Any],
    ours: dict[str, Any],
    theirs: dict[str, Any],
    merged: dict[str, Any],
    found: list[FieldConflict],
    at: str,
    deleted_only: bool = False,
) -> tuple[list[FieldConflict], list[dict[str, str]]]:
    """Record in the merged plan what the EHR deleted, removed or marked entered-in-error; return the new
    conflicts and the removals (`{"kind", "id", "how"}`) for the change event. `merged` is changed in place.

    `deleted`: goal id -> last version seen, for Goals the server deleted (their history says so).
    An item the EHR took out (a Goal deleted, a goal or step the CarePlan no longer names, a member
    gone from the CareTeam) that the team did not change since the last sync stays in the plan,
    marked `removed_in_ehr` (a goal also `entered-in-error`, a member off the team); one the team
    changed too is a conflict on the whole item (`goals[id=…]`, theirs null), the plan keeping the
    team's version. An item the EHR marked entered-in-error that the team changed since is a
    conflict on the whole item as well; otherwise the status merges like any other field.
    `deleted_only`: record only the Goals the server deleted (for a second reading of the server's
    history, whose base is not what the server last held for sure).
    """
    added: list[FieldConflict] = []
    removals: list[dict[str, str]] = []
    gone: set[str] = set()  # goals the EHR deleted or removed that the plan keeps (marked, or held by a conflict)
    for key, kind in ITEM_LISTS:
        b, o, t = (_keyed(d.get(key, []), "id") for d in (base, ours, theirs))
        m = _keyed(merged.get(key, []), "id")
        untouched = dict(m)
        for item_id, item in o.items():
            if not isinstance(item, dict) or item.get(REMOVED):
                continue
            path = f"{key}[id={item_id}]"
            changed = b.get(item_id) != item
            status = ERROR_STATUS.get(key)
            if key == "goals" and item_id in deleted:
                how, version = "deleted", deleted[item_id]
            elif deleted_only:
                continue
            elif item_id not in t and item_id in b:
                if key == "team" and not item.get("in_team", True):
                    if item_id not in m and _referenced(merged, str(item_id)):
                        m[item_id] = item  # off the team and still named by the plan: kept
                    continue
                how, version = "removed", None
            elif (
                status is not None
                and (t.get(item_id) or {}).get(status) == "entered-in-error"
                and (b.get(item_id) or {}).get(status) != "entered-in-error"
                and item.get(status) != "entered-in-error"
            ):
                if changed:  # the team changed it too: the team decides, on the whole item
                    found[:] = [c for c in found if not under(c.path, path)]
                    added.append(FieldConflict(path, b.get(item_id), item, t[item_id]))
                    m[item_id] = item
                else:
                    removals.append({"kind": kind, "id": str(item_id), "how": "entered-in-error"})
                continue
            elif key == "team" and item.get("in_team", True) and (t.get(item_id) or {}).get("in_team") is False:
                if (m.get(item_id) or {}).get("in_team") is False:
                    removals.append({"kind": kind, "id": str(item_id), "how": "removed"})
                continue
            else:
                continue
            if changed:
                if not any(c.path == path for c in found):
                    added.append(FieldConflict(path, b.get(item_id), item, None))
                m[item_id] = item
                if key == "goals":
                    gone.add(str(item_id))
                continue
            marked = {**item, REMOVED: {k: v for k, v in (("at", at), ("how", how), ("version", version)) if v}}
            if key == "goals":
                marked["lifecycle_status"] = "entered-in-error"
            if key == "team":
                marked["in_team"] = False
            m[item_id] = marked
            removals.append({"kind": kind, "id": str(item_id), "how": how})
        if m.keys() == untouched.keys() and all(m[i] is untouched[i] for i in m):
            continue  # as merged (in the server's order when only the server changed the list)
        order = list(untouched)  # the merged order, each item kept back placed after the one before it in ours
        ids = list(o)
        for n, item_id in enumerate(ids):
            if item_id in m and item_id not in order:
                before = next((ids[j] for j in range(n - 1, -1, -1) if ids[j] in order), None)
                order.insert(order.index(before) + 1 if before is not None else 0, item_id)
        items = [m[i] for i in order if i in m]
        if items:
            merged[key] = items
        else:
            merged.pop(key, None)
    gone |= {r["id"] for r in removals if r["kind"] == "goal" and r["how"] != "entered-in-error"}
    _keep_step_goals(ours, merged, gone)
    return added, removals


def _keep_step_goals(ours: dict[str, Any], merged: dict[str, Any], kept_goals: set[str]) -> None:
    """Let steps keep naming the goals the EHR deleted that the plan keeps (the CarePlan lost those links with
    them); a push leaves such links out (service.sync.deletions.on_server, and the held goal's conflict)."""
    if not kept_goals or not merged.get("steps"):
        return
    mine = _keyed(ours.get("steps", []), "id")
    steps = list(merged.get("steps", []))  # new lists and dicts: the merged document shares them with its sources
    merged["steps"] = steps
    for n, step in enumerate(steps):
        ours_ids = (mine.get(step.get("id")) or {}).get("goal_ids", [])
        now = step.get("goal_ids", [])
        back = [g for g in ours_ids if g in kept_goals and g not in now]
        if back:
            ids = [g for g in ours_ids if g in now or g in back] + [g for g in now if g not in ours_ids]
            steps[n] = {**step, "goal_ids": ids}


def unsure_paths(
    merged: dict[str, Any],
    other: dict[str, Any],
    base: dict[str, Any],
    ours: dict[str, Any],
    theirs: dict[str, Any],
    found: list[FieldConflict],
) -> list[FieldConflict]:
    """Return a conflict for each path where two readings of the server's history merge differently.

    After a push whose answer was lost, `merged` takes the last recorded state as the base and
    `other` what the push sent. Where they disagree, the server's value may be the EHR's change or
    our own lost write: the plan keeps ours and the team decides, rather than planbridge guessing
    (and perhaps writing over a clinician's edit). The conflict's EHR side is the server's value
    (`theirs`), which the server keeps until it is resolved. `merged` is changed in place.
    """
    known = [c.path for c in found]
    added: list[FieldConflict] = []
    for path in changed_paths(merged, other):
        if any(under(path, k) or under(k, path) for k in known):
            continue
        mine = get_path(ours, path)
        added.append(FieldConflict(path, get_path(base, path), mine, get_path(theirs, path)))
        known.append(path)
        try:
            set_path(merged, path, copy.deepcopy(mine))
        except (KeyError, TypeError):
            continue
    return added
