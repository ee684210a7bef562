"""Three-way merge of plan documents: what we changed and what the EHR changed since the last sync.

Documents are the plan JSON (service.domain.codec). Objects merge key by key; lists of objects with
an identity (team members, goals, steps, check-ins by `id`; agreements by `member_id`) merge item by
item; any other value is a leaf. A leaf both sides changed differently is a conflict: the merged
document keeps our value there until someone resolves it.
"""

from __future__ import annotations

import copy
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
        out = []
        for k in order:
            merged = self.value(f"{path}[{key}={k}]", b.get(k, MISSING), o.get(k, MISSING), t.get(k, MISSING))
            if merged is not MISSING:
                out.append(merged)
        return out


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


def hold_deleted_goals(
    deleted: set[str] | frozenset[str],
    base: dict[str, Any],
    ours: dict[str, Any],
    merged: dict[str, Any],
    found: list[FieldConflict],
) -> list[FieldConflict]:
    """Keep each goal the EHR deleted in the merged plan and return a conflict for it (unless one is found).

    A deletion in the EHR is the team's to accept (take theirs) or undo (take ours): never silent,
    whether or not the team changed the goal since.
    """
    added: list[FieldConflict] = []
    ours_goals = {g["id"]: g for g in ours.get("goals", []) if isinstance(g, dict) and "id" in g}
    for goal_id in sorted(deleted & set(ours_goals)):
        path = f"goals[id={goal_id}]"
        if not any(c.path == path for c in found):
            added.append(FieldConflict(path, get_path(base, path), ours_goals[goal_id], None))
        kept = {g["id"]: g for g in merged.get("goals", [])}
        kept[goal_id] = ours_goals[goal_id]
        order = [*ours_goals, *(g for g in kept if g not in ours_goals)]
        merged["goals"] = [kept[g] for g in order if g in kept]
    return added


def unsure_paths(
    merged: dict[str, Any],
    other: dict[str, Any],
    base: dict[str, Any],
    ours: dict[str, Any],
    found: list[FieldConflict],
) -> list[FieldConflict]:
    """Return a conflict for each path where two readings of the server's history merge differently.

    After a push whose answer was lost, `merged` takes the last recorded state as the base and
    `other` what the push sent. Where they disagree, the server's value may be the EHR's change or
    our own lost write: the plan keeps ours and the team decides, rather than planbridge guessing
    (and perhaps writing over a clinician's edit). `merged` is changed in place.
    """
    known = [c.path for c in found]
    added: list[FieldConflict] = []
    for path in changed_paths(merged, other):
        if any(under(path, k) or under(k, path) for k in known):
            continue
        mine = get_path(ours, path)
        added.append(FieldConflict(path, get_path(base, path), mine, get_path(other, path)))
        known.append(path)
        try:
            set_path(merged, path, copy.deepcopy(mine))
        except (KeyError, TypeError):
            continue
    return added
