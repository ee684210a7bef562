"""Send only what changed: drop from a push the entries the server already holds as the plan has them.

The merge base (`sync_state.base_document`) is what the server held after the last push or pull. The
Bundle built from it and the Bundle built from the plan now differ exactly where the plan changed
since: an entry that is the same in both is not sent. So an EHR's resources (an adopted plan's Goals,
Observations, CareTeam, CarePlan) are written only when the plan changed them, by id with `If-Match`,
and planbridge's identifier is added to a resource only then.

A sent entry may reference one that is not sent: a resource the server holds by id is then named by its
literal reference (`Goal/123`, never a copy), and one known only by identifier (a conditional create of
a person, a conditional update) is sent along so the reference resolves.
"""

from __future__ import annotations

from typing import Any

from mappings import datatypes as dt

Json = dict[str, Any]


def _references(element: Any, found: set[str]) -> set[str]:
    if isinstance(element, dict):
        for key, value in element.items():
            if key == "reference" and isinstance(value, str):
                found.add(value)
            else:
                _references(value, found)
    elif isinstance(element, list):
        for item in element:
            _references(item, found)
    return found


def _by_id(entry: Json) -> str | None:
    """Return `Type/id` when the entry writes a resource by id (`PUT Type/id`), else None."""
    request = entry.get("request", {})
    url = request.get("url", "")
    return url if request.get("method") == "PUT" and "?" not in url and url.count("/") == 1 else None


def only_changes(bundle: Json, base: Json) -> Json:
    """Return `bundle` without the entries equal in `base` (both built and pinned the same way), plus
    the unpinned entries a sent one references; references to unsent pinned entries become literal."""
    entries = bundle["entry"]
    before = {e.get("fullUrl"): e for e in base.get("entry", [])}
    by_url = {e.get("fullUrl"): e for e in entries}
    sent = {e.get("fullUrl") for e in entries if before.get(e.get("fullUrl")) != e}
    literal: dict[str, str] = {}
    todo = [by_url[url] for url in sent]
    while todo:
        for ref in _references(todo.pop()["resource"], set()):
            if ref not in by_url or ref in sent or ref in literal:
                continue
            target = by_url[ref]
            by_id = _by_id(target)
            if by_id is not None:
                literal[ref] = by_id
            else:
                sent.add(ref)
                todo.append(target)
    kept = [e for e in entries if e.get("fullUrl") in sent]
    kept = [{**entry, "resource": dt.retarget(entry["resource"], literal)} for entry in kept]
    return {**bundle, "entry": kept}
